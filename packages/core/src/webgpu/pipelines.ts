// Compute pipelines cached by shader source (which carries every specialization: dtypes, ranks,
// tile sizes...) and bind group layouts cached by their binding signature. Layouts are explicit, so
// a kernel may declare a binding it does not use on some path.

import { ShaderStage } from './constants.js';

export interface CachedPipeline {
  pipeline: GPUComputePipeline;
  layout: GPUBindGroupLayout;
  /** u32 words of the parameter block the shader declares as `prm: array<vec4<u32>, N>` (params
   * are zero-padded to it); 0 when it declares it some other way */
  paramWords: number;
}

function paramWords(code: string): number {
  const m = /var<uniform>\s+prm\s*:\s*array<vec4<u32>,\s*(\d+)>/.exec(code);
  return m ? 4 * Number(m[1]) : 0;
}

export class PipelineCache {
  private readonly pipelines = new Map<string, CachedPipeline>();
  private readonly layouts = new Map<string, GPUBindGroupLayout>();
  compiled = 0;

  constructor(
    private readonly device: GPUDevice,
    /** called with a message when a shader fails to compile or validate */
    private readonly onError: (message: string) => void,
    /** receives the promise of each pending error scope (so reads can wait for them) */
    private readonly track: (p: Promise<unknown>) => void = () => undefined,
  ) {}

  get size(): number {
    return this.pipelines.size;
  }

  /** The bind group layout of a signature: 'u' (params) then 'r' / 'w' per storage binding. */
  layout(key: string): GPUBindGroupLayout {
    let l = this.layouts.get(key);
    if (!l) {
      const entries: GPUBindGroupLayoutEntry[] = [...key].map((c, i) => ({
        binding: i,
        visibility: ShaderStage.COMPUTE,
        buffer: { type: c === 'u' ? 'uniform' : c === 'w' ? 'storage' : 'read-only-storage' },
      }));
      l = this.device.createBindGroupLayout({ entries, label: `dsv3:${key}` });
      this.layouts.set(key, l);
    }
    return l;
  }

  get(code: string, layoutKey: string, label: string): CachedPipeline {
    const key = `${layoutKey}\n${code}`;
    let p = this.pipelines.get(key);
    if (p) return p;
    const layout = this.layout(layoutKey);
    this.device.pushErrorScope('validation');
    const module = this.device.createShaderModule({ code, label });
    const pipeline = this.device.createComputePipeline({
      label,
      layout: this.device.createPipelineLayout({ bindGroupLayouts: [layout] }),
      compute: { module, entryPoint: 'main' },
    });
    this.track(
      this.device.popErrorScope().then(
        async (err) => {
          if (!err) return;
          let detail = '';
          try {
            const info = await module.getCompilationInfo();
            detail = info.messages.map((m) => `\n  ${m.type} at ${m.lineNum}:${m.linePos}: ${m.message}`).join('');
          } catch {
            // compilation info is best effort
          }
          this.pipelines.delete(key);
          this.onError(`webgpu: kernel '${label}' failed to build: ${err.message}${detail}`);
        },
        () => undefined,
      ),
    );
    this.compiled++;
    p = { pipeline, layout, paramWords: paramWords(code) };
    this.pipelines.set(key, p);
    return p;
  }

  /** Builds a pipeline and waits for it: resolves to null (with the reason) when it does not build. */
  async tryBuild(
    code: string,
    layoutKey: string,
    label: string,
  ): Promise<{ pipeline: CachedPipeline | null; error: string }> {
    const layout = this.layout(layoutKey);
    this.device.pushErrorScope('validation');
    this.device.pushErrorScope('internal');
    const module = this.device.createShaderModule({ code, label });
    let pipeline: GPUComputePipeline | null = null;
    let error = '';
    try {
      pipeline = await this.device.createComputePipelineAsync({
        label,
        layout: this.device.createPipelineLayout({ bindGroupLayouts: [layout] }),
        compute: { module, entryPoint: 'main' },
      });
    } catch (e) {
      error = e instanceof Error ? e.message : String(e);
    }
    const internal = await this.device.popErrorScope();
    const validation = await this.device.popErrorScope();
    const err = validation ?? internal;
    if (err) error ||= err.message;
    if (error) {
      try {
        const info = await module.getCompilationInfo();
        error += info.messages
          .filter((m) => m.type === 'error')
          .map((m) => ` [${m.lineNum}:${m.linePos} ${m.message}]`)
          .join('');
      } catch {
        // best effort
      }
      return { pipeline: null, error };
    }
    const p = { pipeline: pipeline!, layout, paramWords: paramWords(code) };
    this.pipelines.set(`${layoutKey}\n${code}`, p);
    return { pipeline: p, error: '' };
  }
}
