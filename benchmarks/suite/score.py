"""Score a CTC result folder the same way for every tool.

``python -m suite.score GT_TRA RES OUT.json [--bc1]``: ``celltrails.evaluate.evaluate_ctc``
(traccuracy CTCMatcher: TRA, DET, LNK, division F1 with a one-frame buffer, error counts).
traccuracy's division metrics need a one-to-one matching, which CTC's is not when a mask covers two
ground-truth cells (evaluate_ctc then matches by IoU, and says so in its notes); ``--bc1`` adds
py-ctcmetrics' BC(1), the CTC's own division F1 with the same one-frame tolerance on CTC's
matching, as a second opinion (slower: the suite asks for it on series with divisions to compare).
Written atomically.
"""

from __future__ import annotations

import argparse
from importlib import metadata
from pathlib import Path

from celltrails.ctc import read_track_table
from celltrails.evaluate import evaluate_ctc
from celltrails.serialize import write_metrics


def gt_divisions(gt_tra: Path) -> int:
    """Number of divisions (parents with two or more daughters) in a CTC ground truth."""
    parents = read_track_table(gt_tra / "man_track.txt")["parent"]
    counts = parents[parents > 0].value_counts()
    return int((counts >= 2).sum())


def bc1(gt_tra: Path, res: Path) -> dict:
    """py-ctcmetrics' BC(1) and the division counts behind it."""
    from ctc_metrics import evaluate_sequence

    scores = evaluate_sequence(res=str(res), gt=str(gt_tra.parent), metrics=["BC(1)"], threads=1)
    return {"bc1": float(scores["BC(1)"]), "bc1_tool": f"py-ctcmetrics {metadata.version('py-ctcmetrics')}",
            **{f"bc1_{k}": int(scores[f"{k}_div(1)"]) for k in ("tp", "fp", "fn")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("gt_tra", type=Path, help="CTC ground-truth TRA folder")
    parser.add_argument("res", type=Path, help="CTC result folder (maskTTT.tif + res_track.txt)")
    parser.add_argument("out", type=Path, help="metrics JSON to write")
    parser.add_argument("--bc1", action="store_true", help="add py-ctcmetrics BC(1)")
    args = parser.parse_args()
    metrics = evaluate_ctc(args.gt_tra, args.res)
    if args.bc1:
        metrics.update(bc1(args.gt_tra, args.res))
    write_metrics(metrics, args.out)


if __name__ == "__main__":
    main()
