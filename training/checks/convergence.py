"""Convergence (the model learns more than a trivial one would) and overfitting (validation
worsening while training improves, and where early stopping would have stopped)."""

from __future__ import annotations

from training.checks.context import CheckContext
from training.runner import EpochRecord
from training.summary import CheckResult

GAP_SHARE = 0.25  # a classifier must close this share of the gap from the baseline to perfect
LOSS_SHARE = 0.75  # a loss-scored model must end at most this fraction of the baseline's loss
PATIENCE = 3
MIN_DELTA = 1e-3  # relative improvement that counts


def _curve(epochs: list[EpochRecord]) -> list[dict[str, float | None]]:
    return [
        {
            "epoch": e.epoch,
            "train_loss": e.train_loss,
            "val_loss": e.val_loss,
            "train_metric": e.train_metric,
            "val_metric": e.val_metric,
        }
        for e in epochs
    ]


def check_convergence(ctx: CheckContext) -> CheckResult:
    res, base = ctx.main, ctx.baseline
    ev: dict[str, object] = {
        "baseline": base.description,
        "baseline_metric": base.metric,
        "baseline_loss": base.loss,
        "metric": res.metric,
        "epochs": _curve(res.epochs),
    }
    if res.nonfinite is not None:
        nf = res.nonfinite
        return CheckResult(
            "convergence",
            "FAIL",
            f"training stopped at step {nf.step} (epoch {nf.epoch}): the {nf.kind} went non-finite",
            ev,
        )
    trained = [e for e in res.epochs if e.epoch > 0]
    first, last = trained[0], trained[-1]
    loss_fell = (
        last.train_loss is not None and first.train_loss is not None and last.train_loss < first.train_loss
    )
    ev |= {"train_loss_first_epoch": first.train_loss, "train_loss_last_epoch": last.train_loss}
    if res.metric == "accuracy" and base.metric is not None and last.val_metric is not None:
        need = base.metric + GAP_SHARE * (1.0 - base.metric)
        ok, got = last.val_metric >= need, last.val_metric
        what = f"validation accuracy {got:.3f} vs the {base.description} baseline {base.metric:.3f} (needs ≥ {need:.3f})"
    else:  # lower is better: mse against the mean predictor, or the loss against a constant embedding
        ref = base.metric if res.metric == "mse" else base.loss
        got = last.val_metric if res.metric == "mse" and last.val_metric is not None else last.val_loss
        need = LOSS_SHARE * (ref or 0.0)
        ok = ref is not None and got <= need
        what = f"validation {res.metric or 'loss'} {got:.4g} vs the {base.description} baseline {ref:.4g} (needs ≤ {need:.4g})"
    ev |= {"final_val": got, "needed": need}
    fell = f"training loss {first.train_loss:.4g} → {last.train_loss:.4g}"
    if ok and loss_fell:
        return CheckResult("convergence", "PASS", f"{what}; {fell}", ev)
    if not loss_fell:
        return CheckResult("convergence", "FAIL", f"training loss did not fall ({fell}); {what}", ev)
    return CheckResult(
        "convergence",
        "FAIL",
        f"{fell}, but {what}: the model does not generalise beyond the trivial baseline",
        ev,
    )


def check_overfitting(ctx: CheckContext) -> CheckResult:
    res = ctx.main
    trained = [e for e in res.epochs if e.epoch > 0]
    gaps = [
        {
            "epoch": e.epoch,
            "val_minus_train_loss": (e.val_loss - e.train_loss) if e.train_loss is not None else None,
            "train_minus_val_metric": (e.train_metric - e.val_metric)
            if e.train_metric is not None and e.val_metric is not None
            else None,
        }
        for e in trained
    ]
    ev: dict[str, object] = {"patience": PATIENCE, "gaps": gaps, "epochs": _curve(res.epochs)}
    if res.nonfinite is not None:
        nf = res.nonfinite
        return CheckResult(
            "overfitting",
            "FAIL",
            f"training stopped at step {nf.step} (epoch {nf.epoch}) on a non-finite {nf.kind}",
            ev,
        )
    if not trained:
        return CheckResult("overfitting", "FAIL", "no epoch finished", ev)
    best = trained[0]
    stop_epoch: int | None = None
    for e in trained[1:]:
        if e.val_loss < best.val_loss * (1 - MIN_DELTA):
            best = e
        elif stop_epoch is None and e.epoch - best.epoch >= PATIENCE:
            stop_epoch = e.epoch
    last = trained[-1]
    ev |= {
        "best_epoch": best.epoch,
        "best_val_loss": best.val_loss,
        "final_val_loss": last.val_loss,
        "early_stopping_epoch": stop_epoch,
    }
    since = last.epoch - best.epoch
    # Both have to move by more than noise: a flat validation loss beside a flat training loss
    # is a model that learns nothing (convergence's finding), not one that overfits.
    train_improved = (last.train_loss or 0) < (best.train_loss or 0) * (1 - 10 * MIN_DELTA)
    val_rose = last.val_loss > best.val_loss * (1 + MIN_DELTA)
    if since >= PATIENCE and train_improved and val_rose:
        rise = last.val_loss / best.val_loss - 1
        metric_worse = (
            last.val_metric is not None
            and best.val_metric is not None
            and (last.val_metric < best.val_metric) == res.metric_higher_is_better
            and last.val_metric != best.val_metric
        )
        msg = (
            f"validation loss rose {rise:+.1%} over {since} epochs since its best (epoch {best.epoch}, "
            f"{best.val_loss:.4g}) while training loss kept falling; early stopping (patience "
            f"{PATIENCE}) would have stopped at epoch {stop_epoch}"
        )
        if rise > 0.10 and metric_worse:
            return CheckResult("overfitting", "FAIL", msg, ev)
        return CheckResult("overfitting", "WARN", msg, ev)
    return CheckResult(
        "overfitting",
        "PASS",
        f"best validation loss at epoch {best.epoch} of {last.epoch} ({best.val_loss:.4g}); "
        f"no {PATIENCE}-epoch rise while training improved",
        ev,
    )
