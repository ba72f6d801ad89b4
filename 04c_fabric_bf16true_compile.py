# Finetune torchvision's vit_l_16 (ImageNet weights, a new head) on CIFAR-10 and report the
# training time, peak memory and accuracy. Lightning Fabric at the PRECISION set below:
# diff this script with its neighbours to see what changes.
import sys
import time

import lightning as L
import torch
import torch.nn.functional as F
import torchvision
from torchmetrics.classification import MulticlassAccuracy

from flags import parse_args
from local_utilities import compute_accuracy, get_dataloaders
from measurement import StepTimer, print_setup, reset_peak_memory, watch_dtypes
from model_weights import model_weights
from nan_check import DIVERGED_EXIT_CODE, all_finite, divergence_message, first_nonfinite
from run_record import copy_weights, report

PRECISION = "bf16-true"  # everything in bfloat16: weights, activations, gradients, Adam state


def train(num_epochs, model, optimizer, scheduler, train_loader, val_loader, timer, fabric):
    """Finetune; return (the last epoch's accuracies, None), or ({}, where NaN first appeared)."""
    train_accuracy = MulticlassAccuracy(model.heads.head.out_features, average="micro")
    train_accuracy = train_accuracy.to(fabric.device)
    for epoch in range(num_epochs):
        epoch_name = f"Epoch: {epoch + 1:03d}/{num_epochs:03d}"
        model.train()
        timer.start_epoch()
        for batch, (features, targets) in enumerate(train_loader, 1):
            timer.batch_ready()
            logits = model(features)
            loss = F.cross_entropy(logits, targets)
            if not all_finite(loss):  # NaN or inf: stop on every process, and say where it began
                return {}, first_nonfinite(model, features, step=epoch * len(train_loader) + batch)

            optimizer.zero_grad(set_to_none=True)
            fabric.backward(loss)
            optimizer.step()
            train_accuracy.update(logits.argmax(dim=1), targets)

            timer.step_done()  # waits for the accelerator: a sync point
            if batch in (1, len(train_loader)) or timer.seconds_since_progress() >= 30:
                progress = f"Batch {batch:04d}/{len(train_loader):04d} | Loss: {loss.item():.4f}"
                fabric.print(f"{epoch_name} | {progress} | {timer.progress()}")

        scheduler.step()
        train_acc = train_accuracy.compute().item()
        train_accuracy.reset()
        val_acc = compute_accuracy(model, val_loader)
        fabric.print(f"{epoch_name} | Train acc.: {train_acc:.2%} | Val acc.: {val_acc:.2%}")
    if not all_finite(*model.parameters()):  # the last optimizer step can still write NaN
        return {}, "the weights turned non-finite in the last optimizer step"
    return {"train_acc": train_acc, "val_acc": val_acc}, None


if __name__ == "__main__":
    args = parse_args()
    torch.set_float32_matmul_precision(args.matmul_precision)
    L.seed_everything(args.seed, verbose=False)

    # 1 Launch Fabric
    fabric = L.Fabric(
        accelerator=args.accelerator,
        devices=args.devices,
        strategy=args.strategy,
        num_nodes=args.num_nodes,
        precision=PRECISION,
    )
    fabric.launch()
    print_setup(args, PRECISION, fabric.device)  # stops if the device lacks this precision

    # 2 Load the data and the pretrained weights (downloaded once, then cached)
    train_loader, val_loader, test_loader, data = get_dataloaders(args)
    weights = model_weights(args)  # ImageNet weights; None for --quick and --synthetic

    # 3 Build the model directly on the device and in the target precision, with a new head
    memory_baseline = reset_peak_memory(fabric.device)
    with fabric.init_module():
        model = torchvision.models.get_model(args.model, weights=weights)
        model.heads.head = torch.nn.Linear(model.heads.head.in_features, data.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)
    model = torch.compile(model)  # compiles on the first step; before fabric.setup, as in its docs
    model, optimizer = fabric.setup(model, optimizer)
    train_loader, val_loader, test_loader = fabric.setup_dataloaders(
        train_loader, val_loader, test_loader
    )
    dtypes = watch_dtypes(model, PRECISION, fabric.device)  # filled by the first forward pass
    initial_weights = copy_weights(model, args.track_updates)  # --track-updates; else None

    # 4 Finetune; the training time includes the per-epoch validation, as in the reference
    timer = StepTimer(args, steps_per_epoch=len(train_loader), device=fabric.device)
    start = time.perf_counter()
    try:
        accuracies, diverged_at = train(
            num_epochs=args.epochs,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            train_loader=train_loader,
            val_loader=val_loader,
            timer=timer,
            fabric=fabric,
        )
    except KeyboardInterrupt:  # Ctrl-C: one line instead of a traceback
        fabric.print(f"interrupted at {timer.position()}; no record written", file=sys.stderr)
        sys.exit(130)  # the status a shell gives a program stopped by Ctrl-C
    train_time = time.perf_counter() - start

    # 5 Evaluate on the test set; report time, memory and accuracy; append the run's record
    if diverged_at is None:
        accuracies["test_acc"] = compute_accuracy(model, test_loader)
    report(
        args=args,
        data=data,
        timer=timer,
        train_time=train_time,
        memory_baseline=memory_baseline,
        dtypes=dtypes,
        accuracies=accuracies,
        diverged_at=diverged_at,
        model=model,
        initial_weights=initial_weights,
    )
    fabric.barrier()  # every process gets here before any exits, or teardown can abort
    if diverged_at is not None:
        fabric.print(divergence_message(diverged_at, dtypes), file=sys.stderr)
        sys.exit(DIVERGED_EXIT_CODE)
