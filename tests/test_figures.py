"""The evaluation figures: which examples the grids show, what the confusion matrix says."""

import numpy as np
import pytest


@pytest.mark.parametrize("correct", [True, False])
def test_example_grids_take_the_most_confident_across_classes(correct):
    from cmxl_keras import evaluate

    rng = np.random.default_rng(0)
    n, classes = 400, 10
    labels = rng.integers(0, classes, n)
    logits = rng.normal(0, 1, (n, classes))
    logits[:200, 0] += 8  # class 0 predicted with high confidence for half the images
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    predicted, confidence = probabilities.argmax(1), probabilities.max(1)
    chosen = evaluate.pick_examples(probabilities, labels, correct=correct)
    assert len(chosen) == 16 and len(set(chosen)) == 16
    assert all((predicted[i] == labels[i]) == correct for i in chosen)
    pool = [i for i in range(n) if (predicted[i] == labels[i]) == correct]
    shown = {int(predicted[i]) for i in chosen}
    assert shown == {int(predicted[i]) for i in pool} or len(shown) >= 10  # every class
    for cls in shown:  # within a class, the most confident ones, in order
        mine = [i for i in chosen if predicted[i] == cls]
        best = sorted((i for i in pool if predicted[i] == cls), key=lambda i: -confidence[i])
        assert mine == best[:len(mine)]
    # Not the first 16 in index order (which would be nearly all class 0 here).
    assert chosen != pool[:16]


def test_confusion_figure_writes_counts_and_row_percentages():
    import matplotlib

    matplotlib.use("Agg")
    from cmxl_keras import evaluate

    confusion = np.array([[8, 2, 0], [1, 3, 0], [0, 0, 5]])
    fig = evaluate.confusion_figure(confusion, ["a", "b", "c"], "test")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["8\n80%", "2\n20%", "0\n0%", "1\n25%", "3\n75%", "0\n0%",
                     "0\n0%", "0\n0%", "5\n100%"]
