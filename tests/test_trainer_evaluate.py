import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_trainer_fit import cfg, toy_corpus
from trainer.baseline import fit_baseline
from trainer.evaluate import evaluate, markdown
from trainer.fit import fit_clap
from trainer.plots import write_plots
from trainer.runs import RunError, fold_plan

torch.set_num_threads(1)


def test_leave_one_session_out_report_with_baseline_and_plots(tmp_path):
    corpus = toy_corpus(36)
    options = cfg(**{"train.epochs": 1, "train.val_fraction": 0.0})
    for session, idx in fold_plan(corpus.sessions, "all"):
        fit_clap(corpus.subset(idx), options, tmp_path / "run" / f"fold-{session}", held_out=session)
        fit_baseline(corpus.subset(idx), options, tmp_path / "base" / f"fold-{session}", held_out=session)
    # An extra prompt file with paraphrases gives a second zero-shot row for "pleasant".
    alt = tmp_path / "alt" / "pleasant.toml"
    alt.parent.mkdir()
    alt.write_text('label = "x"\nkey_word = "pleasant"\n[negative]\nlabel = "n"\nen = ["I feel bad.", "Ugh."]\n'
                   '[positive]\nlabel = "p"\nen = ["I feel good."]\n')
    results = evaluate(corpus, tmp_path / "run", [Path("prompts"), alt], ["pleasant", "aroused"],
                       baseline=tmp_path / "base")
    rows = {r["system"]: r for r in results["emotions"]["pleasant"]["rows"]}
    assert set(rows) == {"random", "supervised baseline", "zero-shot prompts/pleasant", "zero-shot alt/pleasant",
                         "zero-shot alt/pleasant + paraphrases"}
    labelled = int(np.sum(corpus.labels[:, 0] >= 0))
    assert all(r["n"] == labelled for r in rows.values())  # every labelled utterance, exactly once
    st = rows["zero-shot prompts/pleasant"]["sign_test"]
    assert 0 <= st["p"] <= 1 and st["a_only"] + st["b_only"] <= labelled
    assert "sign_test" not in rows["supervised baseline"]
    assert set(results["emotions"]["aroused"]["scores"]) == {"supervised baseline", "zero-shot prompts/aroused"}
    assert set(results["curves"]) == {"s0", "s1", "s2"}

    table = markdown(results)
    assert "| system | WA | UA | recall 0 | recall 1 | sign test vs baseline |" in table
    assert "| random |" in table and "### pleasant" in table
    json.dumps(results)  # serialisable as results.json
    pngs = write_plots(results, tmp_path)
    assert {p.name for p in pngs} == {"roc_pleasant.png", "roc_aroused.png", "confusion_pleasant.png",
                                      "confusion_aroused.png", "training_curves.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)

    with pytest.raises(RunError, match="no fold-\\*/best.pt"):
        evaluate(corpus, tmp_path / "base" / "nothing", [Path("prompts")], ["pleasant"])
    with pytest.raises(RunError, match="no prompt file for emotion 'aroused'"):
        evaluate(corpus, tmp_path / "run", [alt], ["pleasant", "aroused"])


def test_baseline_scores_are_pooled_around_each_folds_threshold():
    from trainer.evaluate import at_half

    probs = np.array([0.1, 0.3, 0.31, 0.9])
    shifted = at_half(probs, 0.3)
    assert ((shifted >= 0.5) == (probs >= 0.3)).all()
    assert shifted[1] == pytest.approx(0.5)
    assert (np.diff(shifted) > 0).all()  # order within a fold is kept
    np.testing.assert_allclose(at_half(probs, 0.5), probs, atol=1e-6)
