"""Make the teacher of studies/digits_torchscript.yaml, a TorchScript file (run it once, before the search):

    python studies/make_teacher.py             # writes studies/teachers/cnn.torchscript.pt
    python studies/make_teacher.py --outputs   # and studies/teachers/cnn.outputs.npz, the same teacher's outputs

It stands in for a teacher trained elsewhere: a zoo CNN trained for a few epochs on the study's
own training split (nothing is downloaded), traced with its `forward` and its `forward_features`
and saved with torch.jit.save. Any TorchScript file that maps a batch of inputs [B, 1, 8, 8],
normalised as autokd trains on them (or raw, with `inputs: raw`), to logits [B, 10] can be a
teacher; a `forward_features` that returns (logits, features) lets the search use its features too.

--outputs writes what a `logits:` teacher reads instead: train_logits, train_features, val_logits
and test_logits, one row per sample of each split of `autokd.load_data(study.data)`, in its order.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch

import autokd
from autokd.spec import DistillSpec, ScheduleSpec

HERE = Path(__file__).resolve().parent
ARCH = {"family": "cnn", "stages": 2, "channels": 16, "head_width": 64}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=HERE / "digits_torchscript.yaml", help="whose data to train on")
    parser.add_argument("--out", type=Path, default=HERE / "teachers" / "cnn.torchscript.pt")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--outputs", action="store_true", help="also write the teacher's outputs as a .npz")
    args = parser.parse_args()

    data = autokd.load_data(autokd.load_study(args.study).data)
    model = autokd.build_model(ARCH, data.input_shape, data.num_classes, seed=0)
    autokd.fit(model, data, None, DistillSpec(w_ce=1.0, w_kd=0.0),
               ScheduleSpec(epochs=args.epochs, batch_size=64, lr=0.003), seed=0, device="cpu")
    model = model.cpu().eval()
    example = data.x_train[:2]
    with warnings.catch_warnings():  # torch.jit is deprecated upstream, but still what C++ and autokd load
        warnings.simplefilter("ignore")
        traced = torch.jit.trace_module(model, {"forward": example, "forward_features": example})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(traced, str(args.out))
    print(f"teacher {ARCH}: val accuracy {autokd.evaluate(model, data.x_val, data.y_val):.4f}; wrote {args.out}")

    if args.outputs:
        with torch.no_grad():
            logits, features = model.forward_features(data.x_train)
            arrays = {"train_logits": logits, "train_features": features,
                      "val_logits": model(data.x_val), "test_logits": model(data.x_test)}
        path = args.out.with_name("cnn.outputs.npz")
        np.savez(path, **{key: value.numpy() for key, value in arrays.items()})
        print(f"wrote {path}: " + ", ".join(f"{key} {list(value.shape)}" for key, value in arrays.items()))


if __name__ == "__main__":
    main()
