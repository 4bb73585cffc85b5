"""Stain normalisation speed: ours against StainTools (Vahadane), and slide-level tiles/s.

One run measures, on a 1024 x 1024 H&E image (tiatoolbox_target.png resized; target
warwick_target_p.png resized): StainTools Vahadane fit + transform, ours on the CPU, the ratio
(target: >= 30x), and how far apart the outputs are. Then slide level: 512 px tiles normalised
with a cached slide estimate, tiles/s on the CPU and on CUDA when there is a GPU (counting the
host-to-device and device-to-host copies; target on an H100: >= 5000 tiles/s). Medians of
repeats. Ends with one JSON line. Data: WSIPIPE_DATA (default ../shared/data).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from wsipipe.stain import estimate_slide_stain, get_normalizer  # noqa: E402

DATA = Path(os.environ.get("WSIPIPE_DATA", REPO.parent / "shared" / "data"))


def _image(name: str) -> np.ndarray:
    return np.asarray(Image.open(DATA / "stain" / name).convert("RGB").resize((1024, 1024), Image.BICUBIC))


def _median_seconds(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _angle(u, v) -> float:
    return float(np.degrees(np.arccos(np.clip(u @ v / np.linalg.norm(u) / np.linalg.norm(v), -1, 1))))


def _tiles_per_second(normalizer, tiles: np.ndarray, slide, device: torch.device, batch: int, repeats: int) -> float:
    """Host uint8 tiles in, normalised host uint8 tiles out, ``batch`` tiles per call."""
    host = torch.from_numpy(tiles)
    if device.type == "cuda":
        host = host.pin_memory()

    def run():
        for start in range(0, len(host), batch):
            normalizer.transform(host[start : start + batch], source=slide)
        if device.type == "cuda":
            torch.cuda.synchronize()

    run()  # warm-up (kernels, allocator)
    return len(tiles) / _median_seconds(run, repeats)


def main() -> None:
    import staintools

    source, target = _image("tiatoolbox_target.png"), _image("warwick_target_p.png")

    def staintools_run():
        normalizer = staintools.StainNormalizer("vahadane")
        normalizer.fit(target.copy())
        return normalizer.transform(source.copy())

    def ours_run(device="cpu"):
        return get_normalizer("vahadane", device).fit(target).transform(source)

    staintools_run()
    ours_run()  # warm-up
    staintools_s = _median_seconds(staintools_run, 3)
    threads = torch.get_num_threads()
    ours_by_threads = {}
    for count in sorted({1, threads}):  # on a shared, oversubscribed machine 1 thread can win
        torch.set_num_threads(count)
        ours_by_threads[count] = _median_seconds(ours_run, 7)
    torch.set_num_threads(threads)
    ours_s = min(ours_by_threads.values())
    their_out, our_out = staintools_run(), ours_run()
    mad = float(np.abs(their_out.astype(int) - our_out.astype(int)).mean())
    their_matrix = staintools.VahadaneStainExtractor.get_stain_matrix(source.copy())
    our_matrix = get_normalizer("vahadane").estimate(source).array("stain_matrix")
    angles = [_angle(our_matrix[i], their_matrix[i]) for i in range(2)]
    per_thread = ", ".join(f"{n} thread(s) {t * 1000:.1f} ms" for n, t in ours_by_threads.items())
    print(f"1024x1024 fit+transform: StainTools {staintools_s:.3f} s, ours (CPU) {ours_s * 1000:.1f} ms "
          f"({per_thread}), {staintools_s / ours_s:.1f}x faster (target >= 30x)")
    print(f"  vs StainTools: MAD {mad:.2f} grey levels, stain vector angles H {angles[0]:.2f}, E {angles[1]:.2f} degrees")

    tiles = np.stack([np.rot90(source[y : y + 512, x : x + 512], k) for y in (0, 512) for x in (0, 512) for k in range(4)])
    tiles = np.ascontiguousarray(np.concatenate([tiles, tiles[:, ::-1]]))  # 32 distinct 512 px tiles
    cpu = get_normalizer("vahadane", "cpu").fit(target)
    slide = estimate_slide_stain(tiles, cpu)
    cpu_by_threads = {}
    for count in sorted({1, threads}):
        torch.set_num_threads(count)
        cpu_by_threads[count] = _tiles_per_second(cpu, tiles, slide, torch.device("cpu"), batch=8, repeats=3)
    torch.set_num_threads(threads)
    cpu_tps = max(cpu_by_threads.values())
    print("slide level, 512 px tiles, cached stain matrix: CPU " + ", ".join(
        f"{n} thread(s) {v:.1f} tiles/s" for n, v in cpu_by_threads.items()))
    cuda_tps = None
    if torch.cuda.is_available():
        device = torch.device("cuda")
        gpu = get_normalizer("vahadane", device).fit(target)
        many = np.ascontiguousarray(np.concatenate([tiles] * 32))  # 1024 tiles, 805 MB
        cuda_tps = _tiles_per_second(gpu, many, slide, device, batch=256, repeats=5)
        print(f"  CUDA ({torch.cuda.get_device_name()}): {cuda_tps:.0f} tiles/s including host<->device copies "
              "(target on an H100 >= 5000)")
    else:
        print("  CUDA: not available in this session")
    print(json.dumps({
        "staintools_fit_transform_s": round(staintools_s, 4),
        "ours_cpu_fit_transform_s": round(ours_s, 4),
        "ours_cpu_fit_transform_s_by_threads": {str(n): round(t, 4) for n, t in ours_by_threads.items()},
        "speedup": round(staintools_s / ours_s, 1),
        "mad_vs_staintools": round(mad, 3),
        "angle_h_deg": round(angles[0], 3),
        "angle_e_deg": round(angles[1], 3),
        "cpu_tiles_per_s_512": round(cpu_tps, 1),
        "cpu_tiles_per_s_512_by_threads": {str(n): round(v, 1) for n, v in cpu_by_threads.items()},
        "cuda_tiles_per_s_512": None if cuda_tps is None else round(cuda_tps, 1),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else "not available in this session",
        "cpu_threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
