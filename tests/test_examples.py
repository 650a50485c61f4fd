"""The examples run, at small sizes, and say what the README says they say."""

import warnings


def test_quickstart_table_has_the_baselines_and_head_beats_fedavg(capsys, load_example):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = load_example("quickstart").main(["--clients", "10", "--rounds", "15", "--default-rounds", "3"])
    # the table's models run a fixed budget: a stranger's first command does not warn about it
    assert not [w for w in caught if "n_rounds=15" in str(w.message)]
    out = capsys.readouterr().out
    for label in ("FedAvg", "Local only", "personal head", "input layer", "adapters"):
        assert label in out
    assert results["FedAlt, personal head"]["mean"] > results["FedAvg (nothing personal)"]["mean"] + 0.1
    for summary in results.values():
        assert summary["worst"] <= summary["mean"] <= 1


def test_quickstart_over_seeds_summarizes_each_model_and_fedalt_minus_fedsim(capsys, load_example):
    per_seed = load_example("quickstart").main(["--clients", "6", "--rounds", "3", "--seeds", "2", "--seed", "3"])
    out = capsys.readouterr().out
    assert len(per_seed) == 2 and "seeds 3..4" in out
    head = [r["FedAlt, personal head"]["mean"] for r in per_seed]
    assert f"| {'FedAlt, personal head':<30} | {sum(head) / 2:.3f} | {min(head):.3f} | {max(head):.3f} |" in out
    diffs = [r["FedAlt, personal head"]["mean"] - r["FedSim, personal head"]["mean"] for r in per_seed]
    assert f"FedAlt - FedSim (personal head): {diffs[0]:+.3f} {diffs[1]:+.3f};" in out


def test_paper_pipeline_runs_every_stage_and_saves_its_figure(tmp_path, capsys, load_example):
    rows = load_example("paper_pipeline").main(["--quick", "--out", str(tmp_path / "pipeline.png")])
    assert (tmp_path / "pipeline.png").stat().st_size > 10_000
    table = {name: stages for name, stages, _, _ in rows}
    assert set(table["fedalt head"]) == {"pretrain", "train", "finetune"}
    assert "pretrain" not in table["fedalt head, no pre-training"]
    out = capsys.readouterr().out
    assert "clients worse than FedAvg" in out and "fedsim adapters" in out


def test_regressor_example_head_beats_fedavg_on_shifted_targets(tmp_path, capsys, load_example):
    means = load_example("plot_regressor").main(["--clients", "6", "--rounds", "15", "--seeds", "1",
                                                  "--out", str(tmp_path / "regressor.png")])
    assert (tmp_path / "regressor.png").stat().st_size > 10_000
    assert set(means) == {"personal head", "local only", "FedAvg"}
    # offsets of one standard deviation of y per client: one model for all cannot fit them
    assert means["personal head"][0] > means["FedAvg"][0] + 0.2
    assert "mean held-out R^2" in capsys.readouterr().out
