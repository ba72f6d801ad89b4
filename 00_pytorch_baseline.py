# Finetune torchvision's vit_l_16 (ImageNet weights, a new head) on CIFAR-10 and report the
# training time, peak memory and accuracy. Plain PyTorch in float32: 01_fabric_baseline.py is
# the same run converted to Lightning Fabric.
import signal
import sys
import time

import lightning as L  # only for L.seed_everything; the rest is plain PyTorch
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from errors import InputError
from flags import parse_args, recorded_flags
from hardware import PrecisionUnavailable, print_setup
from image_files import UnreadableImage
from local_utilities import accuracy_and_classes, compute_accuracy, get_dataloaders
from measurement import Measurement
from model_weights import ModelSaver, get_model, model_weights
from nan_check import DIVERGED_EXIT_CODE, all_finite, divergence_message, first_nonfinite
from processes import print_once

PRECISION = "32-true"  # float32 weights, activations, gradients and optimizer state


def train(num_epochs, model, optimizer, scheduler, train_loader, val_loader, timer, device, saver):
    """Finetune; return (the last epoch's accuracies, None), or ({}, where NaN first appeared)."""
    train_accuracy = MulticlassAccuracy(model.heads.head.out_features, average="micro")
    train_accuracy = train_accuracy.to(device)
    for epoch in range(num_epochs):
        epoch_name = f"Epoch: {epoch + 1:03d}/{num_epochs:03d}"
        model.train()
        train_loader.sampler.set_epoch(epoch)  # a new shuffle each epoch (Fabric does this for you)
        timer.start_epoch()
        for batch, (features, targets) in enumerate(train_loader, 1):
            timer.batch_ready()
            features, targets = features.to(device), targets.to(device)
            logits = model(features)
            loss = F.cross_entropy(logits, targets)
            if not all_finite(loss):  # NaN or inf: stop on every process, and say where it began
                return {}, first_nonfinite(model, features, step=epoch * len(train_loader) + batch)

            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            train_accuracy.update(logits.argmax(dim=1), targets)

            timer.step_done()  # waits for the accelerator: a sync point
            if batch in (1, len(train_loader)) or timer.seconds_since_progress() >= 30:
                progress = f"Batch {batch:04d}/{len(train_loader):04d} | Loss: {loss.item():.4f}"
                print(f"{epoch_name} | {progress} | {timer.progress()}")

        scheduler.step()
        train_acc = train_accuracy.compute().item()
        train_accuracy.reset()
        val_acc = compute_accuracy(model, val_loader)
        print(f"{epoch_name} | Train acc.: {train_acc:.2%} | Val acc.: {val_acc:.2%}")
        saver.after_epoch(model)  # --save-every-epoch: kept if the run stops later
    if not all_finite(*model.parameters()):  # the last optimizer step can still write NaN
        return {}, "the weights turned non-finite in the last optimizer step"
    return {"train_acc": train_acc, "val_acc": val_acc}, None


def main(args):
    """Steps 1 to 5 of a run; returns its exit status: 0, DIVERGED_EXIT_CODE, or 130 (Ctrl-C)."""
    torch.set_float32_matmul_precision(args.matmul_precision)
    L.seed_everything(args.seed, verbose=False)

    # 1 Pick the device: a CUDA GPU, else Apple's MPS GPU, else the CPU
    if args.devices > 1 or args.num_nodes > 1 or args.strategy != "auto":
        sys.exit("error: 00_pytorch_baseline.py runs on one device; use 01-05 for several")
    device = torch.device("cpu")
    if args.accelerator in ("auto", "cuda") and torch.cuda.is_available():
        device = torch.device("cuda")
    elif args.accelerator in ("auto", "mps") and torch.backends.mps.is_available():
        device = torch.device("mps")
    print_setup(PRECISION, device, args.model)  # raises if the device lacks PRECISION

    # 2 Load the data and the pretrained weights (downloaded once, then cached)
    train_loader, val_loader, test_loader, data = get_dataloaders(
        args.data, args.model, args.batch_size, args.seed, args.max_steps, args.num_workers
    )
    weights = model_weights(args.model, args.weights, args.data_dir)  # None: --quick, --synthetic
    saver = ModelSaver(  # --save: the finetuned model with its class names, for predict.py
        args.save, args.save_every_epoch, args.model, PRECISION, train_loader.dataset
    )

    # 3 Build the model directly on the device and in the target precision, with a new head
    measurement = Measurement(  # the peak memory counts from here
        PRECISION, device, len(train_loader), **recorded_flags(args), **vars(data)
    )
    with torch.device(device):
        model = get_model(args.model, weights=weights)
        model.heads.head = torch.nn.Linear(model.heads.head.in_features, data.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)
    measurement.watch(model, args.track_updates)  # the dtypes in effect; the weights, to compare

    # 4 Finetune; the training time includes the per-epoch validation, as in the reference
    start = time.perf_counter()
    try:
        accuracies, diverged_at = train(
            num_epochs=args.epochs,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            train_loader=train_loader,
            val_loader=val_loader,
            timer=measurement.timer,
            device=device,
            saver=saver,
        )
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (see below): one line instead of a traceback
        where = measurement.timer.position()
        print(f"interrupted at {where}; no record written", file=sys.stderr)
        return 130  # the status a shell gives a program stopped by Ctrl-C
    train_time = time.perf_counter() - start

    # 5 Evaluate on the test set; report time, memory and accuracy; append the run's record
    if diverged_at is None:
        accuracies.update(accuracy_and_classes(model, test_loader))  # and per class
        saver.after_training(model)
    measurement.report(train_time, accuracies, diverged_at, results=args.results)
    if diverged_at is not None:
        message = divergence_message(diverged_at, measurement.precision_in_effect)
        print(message, file=sys.stderr)
        return DIVERGED_EXIT_CODE
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill`, `docker stop`: as Ctrl-C
    try:
        sys.exit(main(parse_args()))
    except InputError as error:  # flags, data, weights or files: every script would stop here
        print_once(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except (PrecisionUnavailable, UnreadableImage) as error:  # this device, or a file found late
        print_once(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as interrupt:  # Ctrl-C outside training: a download, say
        print_once(f"error: {str(interrupt) or 'interrupted'}", file=sys.stderr)
        sys.exit(130)
