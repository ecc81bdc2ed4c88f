"""Zero-shot prompt ensembles of every task: class order, and that each class's reports say what it means."""

import pytest

from mmclip_dist.eval.tasks import TASKS
from mmclip_dist.eval.zeroshot import malignancy_prompts, task_prompts


@pytest.mark.parametrize("task", sorted(TASKS))
def test_prompt_classes_follow_the_task_and_are_view_specific(task):
    for view, position in (("cc", "CC\n"), ("mlo", "MLO\n")):
        prompts = task_prompts(task, view)
        assert list(prompts) == list(TASKS[task].classes)
        for texts in prompts.values():
            assert texts and len(set(texts)) == len(texts)  # no duplicates weighting the mean
            assert all(t.startswith("Projection Position: ") and position in t for t in texts)


def test_prompt_contents_match_their_class():
    assert task_prompts("malignancy", "cc") == malignancy_prompts("cc")
    mass = task_prompts("mass", "cc")
    assert all("A mass" in t for t in mass["present"])
    assert not any("mass" in t.lower() for t in mass["absent"])
    assert any("No suspicious findings." in t for t in mass["absent"])
    calc = task_prompts("calcification", "mlo")
    assert all("calcifications" in t for t in calc["present"]) and not any("calcification" in t for t in calc["absent"])
    for density, texts in task_prompts("density", "cc").items():
        assert all(f"Breast Density: {density}." in t for t in texts)
    birads = task_prompts("birads", "cc")
    assert all("Breast assessment: BI-RADS 1." in t and "No suspicious findings." in t for t in birads["1"])
    assert {t.split("Breast assessment: ")[1][:9] for t in birads["2-3"]} == {"BI-RADS 2", "BI-RADS 3"}
    assert all("Pathology: malignancy" in t for t in birads["4-5"])
