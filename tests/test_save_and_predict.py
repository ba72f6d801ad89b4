"""--save and predict.py: a run saves its finetuned model with its class names, with fabric.save
(01) or torch.save (00); predict.py classifies image files with it exactly as the run's own test
did; --save-every-epoch keeps a stopped run's finished epochs; a file that cannot be written, or
that --save did not write, gets one sentence."""

import errno
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_in_process, schema_problems, write_image_tree

import model_weights
import predict
import step_timer
from errors import InputError
from image_files import load_rgb
from local_utilities import load_splits
from model_weights import ModelSaver, load_saved_model, preprocessing, vit_tiny_32

STEPS_PER_EPOCH = 7  # write_image_tree's 36 training images less 6 for validation, in batches of 4


def quick_run(script, tree, *flags):
    """Flags of a short --quick run on an image tree, as sys.argv."""
    return [script, "--quick", "--data-dir", str(tree), "--batch-size", "4", *flags]


@pytest.mark.parametrize("script", ["00_pytorch_baseline.py", "01_fabric_baseline.py"])
def test_predict_classifies_the_test_images_as_the_run_that_saved_the_model_did(
    tmp_path, monkeypatch, capsys, script
):
    tree = write_image_tree(tmp_path / "images")
    saved, results = tmp_path / "models" / "model.pt", tmp_path / "results.jsonl"
    flags = ["--epochs", "2", "--save", str(saved), "--results", str(results)]
    monkeypatch.setattr(sys, "argv", quick_run(script, tree, *flags))
    assert run_in_process(script) == 0
    assert f"Saved the finetuned model to {saved} (predict.py" in capsys.readouterr().out
    record = json.loads(results.read_text())
    assert record["save"] == str(saved.resolve()) and schema_problems(record) == []

    assert predict.main([str(saved), str(tree / "test")]) == 0
    lines = capsys.readouterr().out.splitlines()
    answers = {line.split(": ")[0]: line.split(": ")[1].split(" (")[0] for line in lines}
    assert len(answers) == 36  # 3 classes x 12 images
    right = [path for path, name in answers.items() if Path(path).parent.name == name]
    assert len(right) / len(answers) == record["test_acc"] >= 0.9  # its preprocessing, its weights


def test_save_every_epoch_keeps_the_finished_epochs_of_a_run_stopped_later(
    tmp_path, monkeypatch, capsys
):
    step_done = step_timer.StepTimer.step_done

    def stopped_in_epoch_2(timer):
        step_done(timer)
        if len(timer.step_times) == STEPS_PER_EPOCH + 2:
            raise KeyboardInterrupt  # as SIGTERM from a scheduler that preempts the run

    monkeypatch.setattr(step_timer.StepTimer, "step_done", stopped_in_epoch_2)
    tree, saved = write_image_tree(tmp_path / "images"), tmp_path / "model.pt"
    flags = ["--epochs", "3", "--save", str(saved), "--save-every-epoch"]
    monkeypatch.setattr(sys, "argv", quick_run("04_fabric_bf16true.py", tree, *flags))
    assert run_in_process("04_fabric_bf16true.py") == 130
    printed = capsys.readouterr()
    assert printed.err == f"interrupted at epoch 2, step {STEPS_PER_EPOCH + 3}; no record written\n"
    assert [line for line in printed.out.splitlines() if line.startswith("Saved")] == [
        f"Saved epoch 1's model to {saved} (predict.py classifies with it)"
    ]
    state = torch.load(saved, weights_only=True)
    assert (state["classes"], state["precision"]) == (["cat", "dog", "frog"], "bf16-true")
    assert state["model"]["heads.head.weight"].dtype == torch.bfloat16  # as it trained
    assert sorted(tmp_path.iterdir()) == sorted([tree, saved])  # no partial file left
    model, _ = load_saved_model(saved)
    assert model.heads.head.weight.dtype == torch.float32


def test_a_model_file_that_cannot_be_written_keeps_what_it_held_and_is_said(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    path.write_bytes(b"an earlier model")

    def full_disk(state, file):  # writes part, then fails as a full disk does
        with open(file, "wb") as stream:
            stream.write(b"part")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(model_weights.torch, "save", full_disk)
    saver = ModelSaver(path, False, "vit_tiny_32", "32-true", dataset=[])
    with pytest.raises(InputError) as refused:
        saver.after_training(vit_tiny_32(num_classes=3))
    assert str(refused.value) == (
        f"could not save the model to --save {path} (No space left on device); the file keeps "
        "what it held before, and this run's numbers are printed above"
    )
    assert path.read_bytes() == b"an earlier model" and list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("model", ["vit_tiny_32", "vit_b_16"])
def test_predict_prepares_an_image_as_training_does(tmp_path, model):
    tree = write_image_tree(tmp_path / "images", per_class=2)
    train = load_splits(tree, model, batch_size=2, max_steps=None)[0]
    image, _ = train.dataset[0]  # train/: a Subset of the image folder
    path = train.dataset.samples[0][0]
    assert torch.equal(preprocessing(model)(load_rgb(path)), image)


def test_a_file_that_save_did_not_write_is_refused_in_one_sentence(tmp_path):
    other = tmp_path / "weights.pt"
    torch.save({"model": {}}, other)
    with pytest.raises(InputError, match="weights.pt is no model file of --save: it lacks"):
        load_saved_model(other)
    with pytest.raises(InputError, match="missing.pt: no such file; give the file that --save"):
        load_saved_model(tmp_path / "missing.pt")
    with pytest.raises(InputError, match="nowhere does not exist; give image files or folders"):
        predict.image_paths([tmp_path / "nowhere"])
    for name in ("b/a.PNG", "a.jpg", ".hidden.png", ".thumbs/c.png", "notes.txt"):
        (tmp_path / ".photos" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / ".photos" / name).write_bytes(b"")
    found = predict.image_paths([tmp_path / ".photos"])  # a folder given may itself be hidden
    assert found == [tmp_path / ".photos" / "a.jpg", tmp_path / ".photos" / "b" / "a.PNG"]
