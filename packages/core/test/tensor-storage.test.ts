// Tensors sharing one storage (a reshape is a view): the storage's count of live tensors, which lets
// dispose() free it only once the last of them goes, and sharesStorage, which autograd reads.
import { describe, expect, it } from 'vitest';
import { cpu, noGrad, Tensor, tensor } from '../src/index.js';

describe('storage shared by tensors', () => {
  it('counts the tensors on a storage; disposing one leaves the others readable, the last frees it', () => {
    noGrad(() => {
      const x = tensor(Float32Array.from([1, 2, 3, 4, 5, 6]), { shape: [2, 3] });
      const s = x.storage;
      expect(s.tensors).toBe(1);
      expect(x.sharesStorage).toBe(false);
      const v = x.reshape([3, 2]);
      expect(v.storage).toBe(s);
      expect(s.tensors).toBe(2);
      expect(x.sharesStorage && v.sharesStorage).toBe(true);
      x.dispose();
      x.dispose(); // twice: no effect on the count
      expect(s.tensors).toBe(1);
      expect(x.disposed && !v.disposed && !v.sharesStorage).toBe(true);
      expect(Array.from(v.dataSync())).toEqual([1, 2, 3, 4, 5, 6]);
      v.dispose();
      expect(s.tensors).toBe(0);
      expect(() => v.dataSync()).toThrow(/\[3, 2\] f32 was disposed/);
    });
  });

  it('a resident block goes back to the engine only with its last tensor', () => {
    const s = cpu.allocResident('f32', 4096);
    const x = new Tensor(cpu, s, [64, 64], 'f32');
    const v = x.reshape([4096]);
    x.dispose();
    // while v lives its block stays taken: a new block of the same size lies elsewhere
    const other = cpu.allocResident('f32', 4096);
    expect(other.data.buffer !== s.data.buffer || other.data.byteOffset !== s.data.byteOffset).toBe(true);
    v.dispose();
    cpu.free(other);
  });
});
