"""What a kernel's SASS does per logit tile, and a static estimate of its time on an H100 from those counts.

``main_loop`` finds the sweep over column tiles in ``cuobjdump -sass`` output (the innermost loop that holds
exponentials) and follows every path through one iteration: the one with the fewest MUFU.EX2 is the bounded-logits
path, the one with the most the running-max path. Per path it counts tensor-core instructions and their FLOPs,
MUFU.EX2, fp32 atomics (REDG) and all instructions.

``tile_cycles`` and ``pass_seconds`` turn those per-tile counts into cycles on an SM with a simple resource model, and is labelled an
estimate wherever it is shown: H100 SXM figures (132 SMs at 1.83 GHz: 4,096 dense 16-bit tensor FLOPs, 16 MUFU
results and 4 warp instructions issued per clock and SM; L2 about 5.5 TB/s; fp32 reductions into L2 assumed at 3
TB/s, a guess: NVIDIA publishes no figure). A tile's tensor work waits for its wgmma before the exponentials (the
SASS shows the wait), so one CTA takes T_tc + max(T_mufu, T_issue); with c CTAs on an SM their phases overlap, so a
tile costs max(T_tc, T_mufu, T_issue, T_memory, serial / c).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

H100 = dict(sms=132, clock=1.83e9, tc_flops=4096, mufu=16, issue=4, l2_bytes=5.5e12, atomic_bytes=3.0e12,
            regs=65536, shared=228 * 1024, warps=64)
_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Za-z0-9_.]*)([^;]*);")
_HGMMA = re.compile(r"HGMMA\.(\d+)x(\d+)x(\d+)")
_HMMA_SHAPES = {"16816": (16, 8, 16), "1688": (16, 8, 8), "16832": (16, 8, 32)}


@dataclass
class Instr:
    addr: int
    predicated: bool
    op: str
    args: str


def parse(sass: str) -> list[Instr]:
    return [Instr(int(m.group(1), 16), bool(m.group(2)), m.group(3), m.group(4)) for m in _INSTR.finditer(sass)]


def _target(ins: Instr):
    m = re.search(r"0x([0-9a-f]+)", ins.args)
    return int(m.group(1), 16) if ins.op == "BRA" and m else None


def tensor_flops(op: str) -> int:
    """FLOPs of one tensor-core instruction as one warp (HMMA) or one warpgroup (HGMMA) issues it."""
    m = _HGMMA.match(op)
    if m:
        return 2 * int(m.group(1)) * int(m.group(2)) * int(m.group(3))
    if op.startswith("HMMA."):
        m, n, k = _HMMA_SHAPES[op.split(".")[1]]
        return 2 * m * n * k
    return 0


def _paths(code, head, tail, limit=4096):
    """Every path of instruction indices from head to tail following forward branches only (inner loops once)."""
    index = {ins.addr: k for k, ins in enumerate(code)}
    out, stack = [], [(head, [])]
    while stack and len(out) < limit:
        k, path = stack.pop()
        while k <= tail:
            path = path + [k]
            target = _target(code[k])
            if target is not None and index.get(target, -1) > k and index[target] <= tail:
                if code[k].predicated:
                    stack.append((k + 1, path))
                k = index[target]
                continue
            if target is not None and not code[k].predicated and k != tail:  # an unconditional jump elsewhere
                break
            k += 1
        else:
            out.append(path)
    return out


def _count_paths(code, head, tail):
    counts = []
    for path in _paths(code, head, tail):
        ops = [code[k].op for k in path]
        counts.append(dict(tensor_ops=sum(tensor_flops(o) > 0 for o in ops),
                           warpgroup_flops=sum(tensor_flops(o) for o in ops if o.startswith("HGMMA")),
                           warp_flops=sum(tensor_flops(o) for o in ops if o.startswith("HMMA")),
                           ex2=ops.count("MUFU.EX2"), atomics=sum(o.startswith("REDG") for o in ops),
                           atomic_bytes=sum(16 if "x4" in o else 8 if "x2" in o else 4 for o in ops
                                            if o.startswith("REDG")), instructions=len(ops)))
    return counts


def _work(c):
    return c["warpgroup_flops"] + c["warp_flops"]


def main_loop(sass: str):
    """Per-iteration counts of the column sweep, or None: {"bounded": counts, "unbounded": counts}, each with
    tensor_ops, warpgroup_flops and warp_flops (of one instruction stream), ex2, atomics, atomic_bytes and
    instructions (per warp)."""
    code = parse(sass)
    loops = [(code.index(next(c for c in code if c.addr == _target(ins))), k) for k, ins in enumerate(code)
             if _target(ins) is not None and _target(ins) <= ins.addr]
    # The sweeps: loops holding exponentials and no inner loop that holds them (a chunked contraction's inner
    # loop has none). Of several (a self-similarity sweep runs its own block's tiles first), the one doing the most
    # tensor-core work per iteration: the steady state.
    with_ex2 = [(h, t) for h, t in loops if any(c.op == "MUFU.EX2" for c in code[h:t + 1])]
    innermost = [(h, t) for h, t in with_ex2
                 if not any(h <= h2 and t2 <= t and (h2, t2) != (h, t) for h2, t2 in with_ex2)]
    if not innermost:
        return None
    counts = max((_count_paths(code, h, t) for h, t in innermost), key=lambda cs: max(map(_work, cs)))
    # Among the paths with the fewest (most) exponentials, the one doing all the tile's work.
    return dict(bounded=min(counts, key=lambda c: (c["ex2"], -_work(c), -c["atomics"])),
                unbounded=max(counts, key=lambda c: (c["ex2"], _work(c), c["atomics"])))


def cta_flops(counts, warps):
    """Tensor-core FLOPs of one iteration for the whole CTA: each warpgroup issues the HGMMA stream, each warp the
    HMMA one."""
    return counts["warpgroup_flops"] * warps // 4 + counts["warp_flops"] * warps


def ctas_per_sm(registers, threads, shared, gpu=H100):
    by_regs = gpu["regs"] // max(1, (registers + 7) // 8 * 8 * threads)
    return max(0, min(by_regs, gpu["shared"] // max(1, shared + 1024), gpu["warps"] * 32 // threads, 32))


def tile_cycles(counts, warps, loaded_bytes, ctas, gpu=H100):
    """Estimated SM cycles per logit tile: (cycles, the bound that sets them)."""
    t_tc = cta_flops(counts, warps) / gpu["tc_flops"]
    t_mufu = counts["ex2"] * 32 * warps / gpu["mufu"]
    t_issue = counts["instructions"] * warps / gpu["issue"]
    per_sm_clock = gpu["sms"] * gpu["clock"]
    t_mem = loaded_bytes / (gpu["l2_bytes"] / per_sm_clock) + counts["atomic_bytes"] * 32 * warps / (
        gpu["atomic_bytes"] / per_sm_clock)
    serial = t_tc + max(t_mufu, t_issue)
    options = dict(tensor=t_tc, mufu=t_mufu, issue=t_issue, memory=t_mem, serial=serial / max(ctas, 1))
    bound = max(options, key=options.get)
    return options[bound], bound


def pass_seconds(cycles_per_tile, n, bm, bn, gpu=H100):
    """Seconds of one sweep of an n x n view pair's logits in tiles of bm x bn, all SMs busy."""
    tiles = -(-n // bm) * -(-n // bn)
    return tiles * cycles_per_tile / (gpu["sms"] * gpu["clock"])
