"""SegGPT speed: promptseg vs ``transformers.SegGptForImageSegmentation``, in one run on the same weights.

    python benchmarks/bench_seggpt.py                  # ViT-L (the released config), one 448² pair
    python benchmarks/bench_seggpt.py --quick          # tiny model, seconds (smoke test)
    python benchmarks/bench_seggpt.py --examples 3     # three prompt pairs with the feature ensemble

Both models get identical random weights: the transformers model's every tensor (LayerNorms, tokens and
position embeddings included) is perturbed with N(0, 0.02²) noise and loaded into promptseg. Each model
runs once as warm-up (its time is printed: no hidden warm-up cost), then the two alternate for
``--repeats`` timed runs under ``torch.inference_mode()``, so that load from other processes on a shared
machine hits both alike. Reported: median wall time and process CPU time of each, the ratio of the
medians, the median of the per-round ratios, and max |Δ pred_masks| (float32).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch


def perturb(model: torch.nn.Module, seed: int, std: float = 0.02) -> None:
    """Add N(0, std²) noise to every parameter and floating buffer of ``model`` in place."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, value in sorted(model.state_dict().items()):
            if value.is_floating_point():
                value.add_(torch.randn(value.shape, generator=gen) * std)


def build_pair(preset: str, seed: int):
    import transformers

    from promptseg.models.seggpt import SEGGPT_PRESETS, build_seggpt
    from promptseg.models.seggpt.weights import config_to_hf, from_hf_state_dict

    config = SEGGPT_PRESETS[preset]
    torch.manual_seed(seed)
    ref = transformers.SegGptForImageSegmentation(transformers.SegGptConfig.from_dict(config_to_hf(config))).eval()
    perturb(ref, seed + 1)
    ours = build_seggpt(config)
    ours.load_state_dict(from_hf_state_dict(ref.state_dict()))
    return config, ref, ours


def measure(fn: Callable[[], torch.Tensor]) -> Dict[str, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model, for a smoke test")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 3, 10 with --quick)")
    parser.add_argument("--examples", type=int, default=1, help="prompt pairs per query (feature ensemble if > 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (10 if args.quick else 3)

    config, ref, ours = build_pair("tiny" if args.quick else "vit_l", args.seed)
    h, w = config.single_image_size
    gen = torch.Generator().manual_seed(args.seed + 100)
    inputs = {k: torch.randn(args.examples, 3, h, w, generator=gen) for k in ("pixel_values", "prompt_pixel_values", "prompt_masks")}
    ensemble = args.examples > 1
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; model {'tiny' if args.quick else 'ViT-L'}; "
        f"{args.examples} pair(s) of {h}×{w}{' with feature ensemble' if ensemble else ''}",
        flush=True,
    )
    runs = {
        "transformers": lambda: ref(**inputs, feature_ensemble=ensemble).pred_masks,
        "promptseg": lambda: ours(**inputs, feature_ensemble=ensemble).pred_masks,
    }
    results: Dict[str, Dict[str, object]] = {}
    with torch.inference_mode():
        outputs: Dict[str, torch.Tensor] = {}
        for name, fn in runs.items():  # each model's first call: the warm-up, timed, and its output the parity check's
            results[name] = {"first": measure(lambda: outputs.setdefault(name, fn())), "runs": []}
        expected, got = outputs["transformers"], outputs["promptseg"]
        diff = (expected - got).abs().max().item()
        print(f"max |Δ pred_masks| = {diff:.2e} (|pred_masks| ≤ {expected.abs().max().item():.3g})", flush=True)
        for r in range(repeats):
            for name, fn in runs.items():
                t = measure(fn)
                results[name]["runs"].append(t)  # type: ignore[union-attr]
                print(f"round {r + 1}: {name:12s} wall {t['wall_s']:8.3f}s  cpu {t['cpu_s']:8.3f}s", flush=True)

    def med(name: str, key: str) -> float:
        return statistics.median(run[key] for run in results[name]["runs"])  # type: ignore[union-attr]

    ref_runs, our_runs = results["transformers"]["runs"], results["promptseg"]["runs"]
    paired = statistics.median(a["wall_s"] / b["wall_s"] for a, b in zip(ref_runs, our_runs))  # type: ignore[arg-type]
    ratio = med("transformers", "wall_s") / med("promptseg", "wall_s")
    cpu_ratio = med("transformers", "cpu_s") / med("promptseg", "cpu_s")
    print()
    print(f"{'model':14s} {'median wall':>12s} {'median cpu':>11s} {'first run':>10s}")
    for name in runs:
        first = results[name]["first"]["wall_s"]  # type: ignore[index]
        print(f"{name:14s} {med(name, 'wall_s'):11.3f}s {med(name, 'cpu_s'):10.3f}s {first:9.3f}s")
    print(f"speed-up (ratio of median wall times): {ratio:.2f}×; median per-round ratio {paired:.2f}×; cpu-time ratio {cpu_ratio:.2f}×")
    print(f"max |Δ pred_masks|: {diff:.2e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "ratio": ratio, "paired_ratio": paired, "cpu_ratio": cpu_ratio, "max_abs_diff": diff}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
