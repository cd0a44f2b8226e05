"""The Pareto views of a fine-tuning sweep (analysis/pareto.py): the front by hand, and the
figure and table `python -m analysis` writes where runs log the pretraining domain's loss."""

import numpy as np
import pandas as pd
import pytest

from analysis.__main__ import main
from analysis.pareto import pareto_front
from tests.analysis.test_analysis import write_run


def test_the_front_is_the_points_no_other_point_dominates():
    # (1, 5), (2, 2) and (5, 1) trade off; (2, 2) dominates (3, 3) and (2, 4); a tie (the
    # second (2, 2)) dominates neither copy; a point with a NaN coordinate is never on it.
    x = [1, 2, 5, 3, 2, 2, np.nan]
    y = [5, 2, 1, 3, 4, 2, 0]
    assert pareto_front(x, y).tolist() == [True, True, True, False, False, True, False]


def test_a_fine_tuning_sweep_gets_the_pareto_table_and_figure(tmp_path):
    """lora/adamw learns most, lora/sgd forgets least, full/adamw is worse on both: the first two
    form the front of learning against forgetting; the runs are 1 s a step (write_run), the
    same for all, so on wall clock lora/adamw alone is on the front."""
    arms = {("lora", "adamw"): (2.0, 2.5), ("lora", "sgd"): (2.1, 2.4),
            ("full", "adamw"): (2.2, 2.6)}
    for (adapter, optimizer), (loss, source) in arms.items():
        for seed in range(3):
            write_run(tmp_path / "runs", "ft", adapter=adapter, optimizer=optimizer, seed=seed,
                      losses=(3.0, 2.5, loss + seed / 100),
                      extra_metrics={"eval/loss_source": source + seed / 100})
    assert main([f"runs={tmp_path / 'runs'}", f"figures={tmp_path / 'fig'}"]) == 0
    assert (tmp_path / "fig" / "ft_pareto.png").stat().st_size > 0
    text = (tmp_path / "fig" / "ft_pareto.md").read_text()
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| ")][1:]
    table = pd.DataFrame([[c.strip() for c in r] for r in rows],
                         columns=["method", "loss", "source", "wall_s", "seeds", "front (source)",
                                  "front (wall_s)"]).set_index("method")
    assert float(table.loc["lora/sgd", "source"]) == pytest.approx(2.41)  # mean of seeds
    assert float(table.loc["lora/adamw", "loss"]) == pytest.approx(2.01)
    assert table["front (source)"].to_dict() == {"full/adamw": "False", "lora/adamw": "True",
                                                 "lora/sgd": "True"}
    assert table["front (wall_s)"].to_dict() == {"full/adamw": "False", "lora/adamw": "True",
                                                 "lora/sgd": "False"}


def test_no_pareto_figure_without_the_pretraining_domain(tmp_path):
    for seed in range(2):
        write_run(tmp_path / "runs", "plain", seed=seed)
        write_run(tmp_path / "runs", "plain", optimizer="sgd", seed=seed)
    assert main([f"runs={tmp_path / 'runs'}", f"figures={tmp_path / 'fig'}"]) == 0
    assert not list((tmp_path / "fig").glob("*pareto*"))
