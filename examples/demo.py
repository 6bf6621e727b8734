"""qcc in one minute: compile a small trained CNN for the CPU and check it against PyTorch.

Loads (or trains, a few seconds) a CNN for scikit-learn's 8×8 digits, compiles it with
``qcc.compile(model, target="cpu-fp32")``, runs the held-out digits through the library, and prints the largest
difference from PyTorch, the top-1 accuracy of both and their median batch-1 latency (timed interleaved).

    python examples/demo.py              # uses examples/digits_cnn.npz when it matches the model
    python examples/demo.py --retrain    # train again (and rewrite the weights file)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WEIGHTS = HERE / "digits_cnn.npz"


def load_or_train(retrain: bool):
    """The trained digits CNN and a line saying where it came from."""
    import torch

    from tests.zoo import digits_cnn, train_digits_cnn

    if WEIGHTS.exists() and not retrain:
        model = digits_cnn()
        with np.load(WEIGHTS) as npz:  # plain arrays, no pickle
            state = {k: torch.from_numpy(npz[k]) for k in npz.files}
        try:
            model.load_state_dict(state, strict=True)
            return model.eval(), f"loaded {WEIGHTS.relative_to(HERE.parent)}"
        except RuntimeError:  # the zoo's definition changed since the file was written
            pass
    t0 = time.perf_counter()
    model = train_digits_cnn()
    np.savez_compressed(WEIGHTS, **{k: v.numpy() for k, v in model.state_dict().items()})
    return model, f"trained in {time.perf_counter() - t0:.1f} s (saved to {WEIGHTS.name})"


def interleaved_median(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds per call of each zero-argument function, called round-robin so machine noise hits all
    alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():  # warm-up
        f()
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--retrain", action="store_true", help="train instead of loading examples/digits_cnn.npz")
    p.add_argument("--threads", type=int, default=1, help="threads for both PyTorch and qcc (batch 1 is tiny)")
    p.add_argument("--repeats", type=int, default=200, help="timed calls of each for the latency")
    args = p.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads its OpenMP runtime
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    sys.path.insert(0, str(HERE.parent))  # for tests.zoo

    import torch

    import qcc
    from tests.zoo import digits_data

    torch.set_num_threads(args.threads)
    model, origin = load_or_train(args.retrain)
    _, _, x_test, y_test = digits_data()
    print(f"digits CNN: {origin}; {len(x_test)} held-out 8×8 images")

    example = torch.from_numpy(x_test[:1])
    t0 = time.perf_counter()
    lib = qcc.compile(model, target="cpu-fp32", example_inputs=(example,), num_threads=args.threads)
    print(f"qcc.compile(target='cpu-fp32'): {time.perf_counter() - t0:.1f} s")

    # The library is exported and loaded back, as a deployment would; the rest of the demo uses the loaded one.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "digits.so"
        lib.export_library(path)
        lib = qcc.load(path)
        with torch.inference_mode():
            ref = np.concatenate([model(torch.from_numpy(x[None])).numpy() for x in x_test])
        out = np.concatenate([lib(x[None]) for x in x_test])

        acc = lambda logits: float((logits.argmax(1) == y_test).mean()) * 100
        print(f"max |qcc - pytorch| over all test logits: {np.abs(out - ref).max():.2e} "
              f"(logits up to {np.abs(ref).max():.1f})")
        print(f"top-1 accuracy: pytorch {acc(ref):.1f}%, qcc {acc(out):.1f}%")

        def torch_run():
            with torch.inference_mode():
                return model(example)

        one = x_test[:1]
        med = interleaved_median({"pytorch": torch_run, "qcc": lambda: lib(one)}, args.repeats)
    pt, qc = med["pytorch"], med["qcc"]
    verdict = f"{pt / qc:.1f}× faster" if qc < pt else f"{qc / pt:.1f}× slower"
    print(f"median batch-1 latency ({args.repeats} interleaved calls each, {args.threads} thread(s)): "
          f"pytorch {pt * 1e3:.3f} ms, qcc {qc * 1e3:.3f} ms (qcc {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
