"""The keyed random streams of a run: `stream(seed, step, tag)` is a private CPU torch.Generator
that depends on nothing but its key (never on global RNG), so data-parallel ranks agree without
talking, a resumed run replays the same draws, and tests can pin them."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

TAGS: dict[str, int] = {
    "paths": 0,  # the training step's subnetwork (Plan.active_layers)
    "eval_paths": 0xE7A1,  # `raptr eval --path-lengths`: the i-th random path of each length
    "toy_batches": 0xDA7A,  # analysis/polynomial.py: the toy experiment's batch indices
    "heads": 0x4EAD5,  # Random Part Training: the attention heads each active block keeps
    "units": 0x0417F,  # Random Part Training: the MLP intermediate units each active block keeps
}
"""Each stream's salt, XORed into the run seed. The values are the ones these streams used before they
shared this module, so every draw replays; a new stream adds one line with a salt of its own."""


def _splitmix64(x: int) -> int:
    """SplitMix64 finaliser: a bijection on 64-bit ints that scatters nearby inputs."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def _mix32(x: int) -> int:
    """lowbias32 (C. Wellons): xorshifts and odd multiplies, so a bijection on 32-bit ints."""
    x = ((x ^ (x >> 16)) * 0x7FEB352D) & 0xFFFFFFFF
    x = ((x ^ (x >> 15)) * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def stream(seed: int, step: int, tag: str, block: int = 0) -> "torch.Generator":
    """CPU generator for (seed ^ TAGS[tag], step, block), seeded by mix32((salt + step) mod 2^32) where
    salt is splitmix64 of that seed (plus block times the golden ratio, so block 0 is the plain stream)
    folded to 32 bits. `block` keys the width draws per block: a block's heads depend on nothing but
    (seed, step, block), not on which other blocks run. torch's CPU generator (mt19937) keeps only 32 bits of a
    seed, so the key is a 32-bit bijection of the step: no two steps of one stream (< 2^32 steps) share
    a key, and another seed or tag replays a stream only shifted by a random ~2^31 steps."""
    salt = _splitmix64(((seed ^ TAGS[tag]) + block * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
    import torch  # lazy: `raptr flops` and recipe validation never draw

    return torch.Generator(device="cpu").manual_seed(_mix32(((salt ^ (salt >> 32)) + step) & 0xFFFFFFFF))


def step_generator(seed: int, step: int) -> "torch.Generator":
    """The training paths' stream of `step` (the name the golden path tests pin)."""
    return stream(seed, step, "paths")


def sample_subset(n_layers: int, fixed: list[int], k: int, gen: "torch.Generator") -> list[int]:
    """k active layers: all fixed ones plus k - |fixed| of the others uniformly (one randperm)."""
    free = [i for i in range(n_layers) if i not in fixed]
    import torch

    pick = torch.randperm(len(free), generator=gen)[: k - len(fixed)].tolist()
    return sorted(set(fixed) | {free[j] for j in pick})


def sample_parts(n: int, k: int, gen: "torch.Generator") -> tuple[int, ...]:
    """k of n parts (heads or units) uniformly, ascending (one randperm)."""
    import torch

    return tuple(sorted(torch.randperm(n, generator=gen)[:k].tolist()))
