"""Routing benchmark: TwoViewNet's batched per-sample routing against the two naive ways, side by side.

A mixed batch of 16 studies (8 two-view, 4 frontal-only, 4 lateral-only) at 224 px through full
DenseNet121 branches, in inference mode. Compared, in one run, interleaved:
  routed      TwoViewNet, float32 (each trunk sees only its rows, fusion only two-view rows)
  fast        TwoViewNet.fast(): channels-last + bfloat16 autocast where the device supports it
  loop        (a) one study at a time, float32, `if` statements choosing the branches
  blank       (b) every branch on every row, blank images for missing views (the published code's way)
Prints images per second and the ratios the targets are set on.

    python bench/routing.py [--device cuda] [--rounds 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from models import ModelConfig, TwoViewNet


def mixed_batch(size: int, device: torch.device):
    rows = [(1, 1)] * 8 + [(1, 0)] * 4 + [(0, 1)] * 4
    g = torch.Generator().manual_seed(0)
    frontal = torch.randn(len(rows), 1, size, size, generator=g).to(device)
    lateral = torch.randn(len(rows), 1, size, size, generator=g).to(device)
    has_f = torch.tensor([r[0] for r in rows], dtype=torch.bool, device=device)
    has_l = torch.tensor([r[1] for r in rows], dtype=torch.bool, device=device)
    return frontal, lateral, has_f, has_l


def loop(net: TwoViewNet, frontal, lateral, has_f, has_l):
    """(a) batch size 1 with `if`s: what a straightforward implementation does."""
    outs = []
    for i in range(frontal.shape[0]):
        f, lat = frontal[i : i + 1], lateral[i : i + 1]
        if has_f[i] and has_l[i]:
            fm, lm = net.frontal.trunk(f), net.lateral.trunk(lat)
            net.frontal.head(net.frontal.tail(fm))
            net.lateral.head(net.lateral.tail(lm))
            outs.append(net.joint(fm, lm))
        elif has_f[i]:
            outs.append(net.frontal.head(net.frontal.tail(net.frontal.trunk(f))))
        else:
            outs.append(net.lateral.head(net.lateral.tail(net.lateral.trunk(lat))))
    return torch.cat(outs)


def blank(net: TwoViewNet, frontal, lateral, has_f, has_l):
    """(b) every branch on every row, zero images standing in for missing views."""
    f = torch.where(has_f[:, None, None, None], frontal, torch.zeros_like(frontal))
    lat = torch.where(has_l[:, None, None, None], lateral, torch.zeros_like(lateral))
    fm, lm = net.frontal.trunk(f), net.lateral.trunk(lat)
    net.frontal.head(net.frontal.tail(fm))
    net.lateral.head(net.lateral.tail(lm))
    return net.joint(fm, lm)


def timed(fn, sync) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    plain = TwoViewNet(ModelConfig(image_size=args.size)).to(device).eval()
    fast = TwoViewNet(plain.config).to(device)
    fast.load_state_dict(plain.state_dict())
    fast.fast()
    batch = mixed_batch(args.size, device)
    images = int(batch[2].sum() + batch[3].sum())
    runs = {
        "routed": lambda: plain(*batch),
        "fast": lambda: fast(*batch),
        "loop": lambda: loop(plain, *batch),
        "blank": lambda: blank(plain, *batch),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for fn in runs.values():  # warm-up (allocator, oneDNN / cuDNN kernel choice)
            fn()
        for _ in range(args.rounds):
            for name, fn in runs.items():
                times[name].append(timed(fn, sync))
        ref, got = plain(*batch).sigmoid().final, fast(*batch).sigmoid().final
    ips = {name: images / statistics.median(t) for name, t in times.items()}
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, device {device}"
    )
    print(
        f"torch {torch.__version__}; fast dtype: {fast.inference_dtype}; {images} images in a batch of 16 studies"
    )
    for name, value in ips.items():
        print(f"  {name:7s} {value:8.1f} images/s  (median of {args.rounds})")
    print(f"fast / loop (a):     {ips['fast'] / ips['loop']:.2f}x  (target >= 2.5x on CPU, >= 4x on GPU)")
    print(f"routed / blank (b):  {ips['routed'] / ips['blank']:.2f}x  (target >= 1.3x)")
    print(f"fast / routed:       {ips['fast'] / ips['routed']:.2f}x  (target >= 2x)")
    print(f"fast vs float32: max |probability difference| = {(got - ref).abs().max():.4f}  (target <= 0.02)")


if __name__ == "__main__":
    main()
