// docs/running-on-clusters.md: its Slurm batch script and Kubernetes manifests parse, hold together
// (names, sizes, ports agree) and give initProcessGroup() the layout they promise.
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { detectLaunchEnv } from '../src/index.js';

const doc = readFileSync(new URL('../../../docs/running-on-clusters.md', import.meta.url), 'utf8');
const blocks = (lang: string) =>
  [...doc.matchAll(new RegExp(`\`\`\`${lang}\\n([\\s\\S]*?)\`\`\``, 'g'))].map((m) => m[1]!);

// biome-ignore lint/suspicious/noExplicitAny: parsed YAML of any shape, read field by field in assertions
type Obj = Record<string, any>;

function manifests(): Obj[] {
  return blocks('yaml').flatMap((text) =>
    parseAllDocuments(text).map((d) => {
      expect(d.errors, String(d.errors)).toEqual([]);
      return d.toJS() as Obj;
    }),
  );
}

const envOf = (container: Obj): Record<string, string> =>
  Object.fromEntries((container.env ?? []).map((e: Obj) => [e.name, String(e.value)]));

describe('docs/running-on-clusters.md', () => {
  it('the Kubernetes Indexed Job and its headless Service agree, and every pod reads its rank', () => {
    const all = manifests();
    const job = all.find((m) => m.kind === 'Job')!;
    const svc = all.find((m) => m.kind === 'Service')!;
    expect(job.apiVersion).toBe('batch/v1');
    expect(svc.apiVersion).toBe('v1');
    expect(svc.spec.clusterIP).toBe('None'); // headless: per-pod DNS names
    const spec = job.spec;
    expect(spec.completionMode).toBe('Indexed');
    const pod = spec.template;
    expect(pod.spec.restartPolicy).toBe('Never');
    expect(pod.spec.subdomain).toBe(svc.metadata.name);
    for (const [k, v] of Object.entries(svc.spec.selector)) expect(pod.metadata.labels[k]).toBe(v);
    const [c] = pod.spec.containers;
    expect(c.command.length).toBeGreaterThan(0);
    const env = envOf(c);
    expect(Number(env.WORLD_SIZE)).toBe(spec.completions);
    expect(spec.parallelism).toBe(spec.completions);
    expect(env.MASTER_ADDR).toBe(`${job.metadata.name}-0.${svc.metadata.name}`);
    expect(svc.spec.ports.map((p: Obj) => p.port)).toContain(Number(env.MASTER_PORT));
    expect(c.ports.map((p: Obj) => p.containerPort)).toContain(Number(env.MASTER_PORT));
    for (let index = 0; index < spec.completions; index++) {
      const le = detectLaunchEnv({ ...env, JOB_COMPLETION_INDEX: String(index), KUBERNETES_SERVICE_HOST: '10.96.0.1' });
      expect(le).toMatchObject({
        launcher: 'kubernetes',
        rank: index,
        worldSize: spec.completions,
        masterAddr: env.MASTER_ADDR,
        masterPort: Number(env.MASTER_PORT),
      });
    }
  });

  it('the Kubeflow PyTorchJob is well formed and the variables its operator sets give each pod its rank', () => {
    const job = manifests().find((m) => m.kind === 'PyTorchJob')!;
    expect(job.apiVersion).toBe('kubeflow.org/v1');
    const specs = job.spec.pytorchReplicaSpecs;
    expect(specs.Master.replicas).toBe(1);
    expect(specs.Worker.replicas).toBeGreaterThan(0);
    for (const role of ['Master', 'Worker']) {
      const [c] = specs[role].template.spec.containers;
      expect(c.name).toBe('pytorch'); // the operator injects its variables into the container of this name
      expect(c.command.length).toBeGreaterThan(0);
    }
    const world = 1 + specs.Worker.replicas;
    for (let rank = 0; rank < world; rank++) {
      const operatorEnv = {
        RANK: String(rank),
        WORLD_SIZE: String(world),
        MASTER_ADDR: `${job.metadata.name}-master-0`,
        MASTER_PORT: '23456',
        KUBERNETES_SERVICE_HOST: '10.96.0.1',
      };
      expect(
        detectLaunchEnv({
          ...envOf(specs[rank === 0 ? 'Master' : 'Worker'].template.spec.containers[0]),
          ...operatorEnv,
        }),
      ).toMatchObject({
        launcher: 'kubeflow',
        rank,
        worldSize: world,
        masterAddr: 'dsv3-train-master-0',
        masterPort: 23456,
      });
    }
  });

  it('the Slurm batch script is valid bash and, run with stub scontrol/srun, hands srun the layout dsv3 reads', () => {
    const script = blocks('bash').find((b) => b.includes('#SBATCH'))!;
    expect(script).toBeDefined();
    const dir = mkdtempSync(join(tmpdir(), 'dsv3-slurm-'));
    try {
      const file = join(dir, 'dsv3.sbatch');
      writeFileSync(file, script);
      execFileSync('bash', ['-n', file]);
      const sbatch = Object.fromEntries([...script.matchAll(/^#SBATCH --([\w-]+)=(\S+)/gm)].map((m) => [m[1]!, m[2]!]));
      const nodes = Number(sbatch.nodes);
      const perNode = Number(sbatch['ntasks-per-node']);
      expect(nodes * perNode).toBeGreaterThan(1);
      writeFileSync(join(dir, 'scontrol'), '#!/bin/sh\n[ "$1 $2" = "show hostnames" ] && printf "gpu07\\ngpu08\\n"\n');
      writeFileSync(
        join(dir, 'srun'),
        '#!/bin/sh\necho "SRUN $* MASTER=$MASTER_ADDR:$MASTER_PORT TRANSPORT=$DSV3_TRANSPORT"\n',
      );
      chmodSync(join(dir, 'scontrol'), 0o755);
      chmodSync(join(dir, 'srun'), 0o755);
      const jobEnv = {
        SLURM_JOB_NODELIST: 'gpu[07-08]',
        SLURM_JOB_ID: '123456',
        SLURM_NTASKS: String(nodes * perNode),
        SLURM_TASKS_PER_NODE: `${perNode}(x${nodes})`,
      };
      const run = spawnSync('bash', [file], {
        encoding: 'utf8',
        env: { ...process.env, ...jobEnv, PATH: `${dir}:${process.env.PATH}` },
      });
      expect(run.status, run.stderr).toBe(0);
      const m = /SRUN (.*) MASTER=(\S+):(\d+) TRANSPORT=(\w+)/.exec(run.stdout)!;
      expect(m, run.stdout).not.toBeNull();
      expect(m[1]).toContain('--kill-on-bad-exit=1');
      expect([m[2], Number(m[3]), m[4]]).toEqual(['gpu07', 20000 + (123456 % 20000), 'tcp']);
      // What one task (the last one) then reads.
      const last = nodes * perNode - 1;
      const le = detectLaunchEnv({
        ...jobEnv,
        SLURM_PROCID: String(last),
        SLURM_LOCALID: String(perNode - 1),
        SLURM_NODEID: String(nodes - 1),
        MASTER_ADDR: m[2],
        MASTER_PORT: m[3],
      });
      expect(le).toEqual({
        launcher: 'slurm',
        rank: last,
        worldSize: nodes * perNode,
        localRank: perNode - 1,
        localWorldSize: perNode,
        nodeRank: nodes - 1,
        masterAddr: 'gpu07',
        masterPort: Number(m[3]),
      });
      // Without the exports, dsv3 derives the same store address from Slurm's own variables.
      expect(detectLaunchEnv({ ...jobEnv, SLURM_PROCID: '0' })).toMatchObject({
        masterAddr: 'gpu07',
        masterPort: Number(m[3]),
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
