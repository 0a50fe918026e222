"""Choose the batch size and the learning rate by measurement: ``gd.sharpness``, ``gd.noise_scale``, ``gd.study``.

What this example teaches:

* ``gd.sharpness`` (the largest Hessian eigenvalue of the full-data loss)
  places the learning rates: constant-step gradient descent is stable only
  below ``2 / sharpness`` at the start, so the grid spans decades below it
  and a little past it.
* ``gd.noise_scale`` gives McCandlish et al.'s simple noise scale
  ``B_simple = tr(Sigma) / |G|^2``: batches much smaller than it waste
  steps, batches much larger waste examples. It grows as training goes on.
* ``gd.study`` runs one learning-rate sweep per batch size and reads the
  steps, examples and seconds the best rate took to reach a target loss. The
  pick is the knee of the steps/examples trade-off; McCandlish's model
  fitted to the measurements gives the critical batch size.
* The resolution is one epoch (the loss is measured after each): the target
  is chosen to take several epochs even at the smallest batch size.

Part 1: softmax regression on scikit-learn's digits (standardized pixels).
Part 2 (``--synthetic``): least squares on 16384 examples with known answers:
the sharpness is ``L``, and ``B_simple`` and McCandlish's ``B_noise =
tr(H Sigma) / G^T H G`` can be computed exactly and set beside the fitted
critical batch size.

Run it with ``python examples/choose_batch_size.py [--synthetic] [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

import gdjax as gd


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder for the figures (default: a new temporary folder)")
    parser.add_argument("--synthetic", action="store_true", help="also run part 2, least squares with known answers")
    parser.add_argument("--quick", action="store_true", help="fewer batch sizes, learning rates and epochs (for CI)")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed of the data order")
    return parser.parse_args(argv)


def digits() -> dict[str, np.ndarray]:
    """sklearn's digits: 1797 images of 64 pixels, standardized (a constant pixel becomes 0), and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.data.astype(np.float64)
    std = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    return {"x": x.astype(np.float32), "y": d.target.astype(np.int32)}


def part_digits(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    data = digits()
    model = gd.models.logistic(num_classes=10)
    params = model.init(None, 64)
    lam = gd.sharpness(model.loss, params, data)
    b_simple = gd.noise_scale(model.loss, params, data)
    print(f"digits: softmax regression, {len(data['y'])} examples of 64 standardized pixels")
    print(f"sharpness {lam:.4g} at the start: gradient descent is stable below 2/sharpness = {2 / lam:.4g}")
    print(f"noise scale B_simple {b_simple:.4g} at the start\n")
    # the cross-entropy flattens as the model grows confident (its sharpness falls), so rates well past the
    # initial 2/sharpness are tried too: large batches end up using them
    lrs = np.geomspace(3e-3, 30.0, 8 if args.quick else 16) * 2 / lam
    sizes = [8, 64, 512, 1797] if args.quick else [1, 4, 16, 64, 256, 1024, 1797]
    st = gd.study(
        model.loss,
        params,
        optax.sgd,
        data,
        batch_sizes=sizes,
        learning_rates=lrs,
        target=0.05,  # a log-loss most of the way down from log(10) = 2.3: several epochs even for small batches
        epochs=40 if args.quick else 100,
        key=jax.random.key(args.seed),
    )
    print(st.summary())
    _advice(st)
    path = out / "digits_study.png"
    gd.plot.save(gd.plot.study(st), path)
    print(f"wrote {path}\n")
    return {"study": st, "sharpness": lam, "noise_scale": b_simple, "figure": path}


def _advice(st: gd.StudyResult) -> None:
    """What to pick, in words."""
    b, lr = st.recommended_batch_size, st.recommended_learning_rate
    if b is None or lr is None:
        print("no batch size reached the target: raise epochs or the target\n")
        return
    crit = st.critical_batch_size
    where = "" if crit is None else f"; the fitted critical batch size is {crit:.0f}"
    print(
        f"what to pick: batch size {b} with learning rate {lr:.3g}. Smaller batches take more updates for about the "
        f"same examples, larger ones more examples for few updates saved{where}.\n"
    )


def exact_noise_scales(prob: gd.problems.Regression, params: Any) -> tuple[float, float]:
    """``(B_simple, B_noise)`` of least squares at ``params``, in float64 from the per-example gradients.

    ``B_simple = tr(Sigma) / |G|^2`` and McCandlish's ``B_noise = tr(H Sigma) / G^T H G``, with ``H = A^T A / n``
    the cost's (constant) Hessian, ``A = [X, 1]``.
    """
    a = np.column_stack([prob.data["x"].astype(np.float64), np.ones(len(prob.data["y"]))])
    theta = np.append(np.asarray(params["w"], np.float64), float(params["b"]))
    grads = a * (a @ theta - prob.data["y"].astype(np.float64))[:, None]  # per-example gradients
    g = grads.mean(axis=0)
    sigma = np.cov(grads, rowvar=False)
    h = a.T @ a / len(a)
    return float(np.trace(sigma) / (g @ g)), float(np.trace(h @ sigma) / (g @ h @ g))


def part_synthetic(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    n, d = (2048, 8) if args.quick else (16384, 16)
    prob = gd.problems.linear_regression(n=n, d=d, key=jax.random.key(0), scales=np.geomspace(1.0, 0.1, d))
    model = gd.models.linear()
    params = model.init(None, d)
    lam = gd.sharpness(model.loss, params, prob.data)
    print(f"least squares, {n} examples of {d} features (scales 1 to 0.1), noise 0.5: min loss {prob.min_loss:.5g}")
    print(f"sharpness {lam:.6g}, exact L = {prob.lipschitz:.6g}: 2/L = {2 / prob.lipschitz:.4g}")
    sizes = [1, 16, 256, n] if args.quick else [1, 8, 64, 512, 4096, n]
    st = gd.study(
        model.loss,
        params,
        optax.sgd,
        prob.data,
        batch_sizes=sizes,
        learning_rates=np.geomspace(1e-4, 1.2, 16) * 2 / lam,
        target=1.01 * prob.min_loss,  # 1% above the least-squares optimum
        epochs=100 if args.quick else 200,
        key=jax.random.key(args.seed),
    )
    print(st.summary())
    _advice(st)
    exact: dict[str, Any] = {"start": exact_noise_scales(prob, params)}
    print(
        f"exact at the start: B_simple {exact['start'][0]:.4g}, B_noise = tr(H Sigma)/G^T H G {exact['start'][1]:.4g}"
    )
    i = None if st.noise_scale_batch_size is None else st.batch_sizes.index(st.noise_scale_batch_size)
    if i is not None:
        member = st.best_members[i]
        assert member is not None
        exact["target"] = exact_noise_scales(prob, st.sweeps[i].member_params(member))
        simple, noise = exact["target"]
        print(
            f"exact at the target (best run of batch size {sizes[i]}): B_simple {simple:.4g} "
            f"(gd.noise_scale: {st.noise_scale_at_target:.4g}), B_noise {noise:.4g}"
        )
    if st.critical_batch_size is not None:
        print(
            f"fitted critical batch size {st.critical_batch_size:.4g}: between the noise scales at the start and at "
            "the target (the steps of the whole run are spent at every loss in between); B_simple also ignores "
            "the curvature, which B_noise weighs"
        )
    path = out / "least_squares_study.png"
    gd.plot.save(gd.plot.study(st), path)
    print(f"wrote {path}\n")
    return {"study": st, "problem": prob, "sharpness": lam, "exact": exact, "figure": path}


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gdjax-choose-batch-size-"))
    out.mkdir(parents=True, exist_ok=True)
    result = {"digits": part_digits(args, out)}
    if args.synthetic:
        result["synthetic"] = part_synthetic(args, out)
    return result


if __name__ == "__main__":
    main()
