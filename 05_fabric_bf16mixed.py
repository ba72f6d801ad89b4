# Finetune torchvision's vit_l_16 (ImageNet weights, a new head) on CIFAR-10; report training time, memory and accuracy.
# Lightning Fabric at the PRECISION set below; diff this script with its neighbours to see what changes.
import sys
import time

import lightning as L
import torch
import torch.nn.functional as F
import torchvision
from torchmetrics.classification import MulticlassAccuracy

from local_utilities import (DIVERGED_EXIT_CODE, StepTimer, all_finite, compute_accuracy, divergence_advice,
                             first_nonfinite, get_dataloaders, parse_args, pretrained_weights, print_setup, report,
                             reset_peak_memory, synchronize, watch_dtypes)

PRECISION = "bf16-mixed"  # bfloat16 autocast for matmuls; float32 weights; no loss scaling


def train(args, model, optimizer, scheduler, train_loader, val_loader, num_classes, fabric):
    """Finetune; return the step timer, the last epoch's accuracies and, if the run diverged, where NaN appeared."""
    steps = min(args.max_steps or args.epochs * len(train_loader), args.epochs * len(train_loader))  # --max-steps: 1 epoch
    if args.max_steps and steps < args.max_steps:
        fabric.print(f"Training {steps} of the {args.max_steps} steps asked for: one epoch of this data has {steps} batches")
    timer = StepTimer(steps, args.warmup_steps, args.batch_size * fabric.world_size)  # times each step after warm-up
    train_accuracy = MulticlassAccuracy(num_classes, average="micro").to(fabric.device)
    for epoch in range(args.epochs):
        model.train()
        steps_this_epoch = min(len(train_loader), timer.total_steps - timer.steps)
        step_end = last_print = time.perf_counter()
        for batch, (features, targets) in enumerate(train_loader, 1):
            data_ready = time.perf_counter()  # the time since the last step ended went into waiting for this batch
            logits = model(features)
            loss = F.cross_entropy(logits, targets)
            if not all_finite(loss):  # NaN or inf: stop here, on every process, and find where it first appeared
                return timer, {}, first_nonfinite(model, features, step=timer.steps + 1)

            optimizer.zero_grad(set_to_none=True)
            fabric.backward(loss)
            optimizer.step()
            train_accuracy.update(logits.argmax(dim=1), targets)

            synchronize(fabric.device)  # wait for the accelerator's queued work: the step time is its real time
            timer.add(step_time=time.perf_counter() - step_end, data_wait=data_ready - step_end)
            step_end = time.perf_counter()
            if batch in (1, steps_this_epoch) or step_end - last_print >= 30:  # a progress line every 30 seconds
                progress = f"Batch {batch:04d}/{steps_this_epoch:04d} | Loss: {loss.item():.4f} | {timer.progress()}"
                fabric.print(f"Epoch: {epoch + 1:03d}/{args.epochs:03d} | {progress}")
                last_print = step_end
            if batch == steps_this_epoch:
                break

        scheduler.step()
        train_acc, val_acc = train_accuracy.compute().item(), compute_accuracy(model, val_loader)
        train_accuracy.reset()
        fabric.print(f"Epoch: {epoch + 1:03d}/{args.epochs:03d} | Train acc.: {train_acc:.2%} | Val acc.: {val_acc:.2%}")
    diverged_at = None if all_finite(*model.parameters()) else "the weights turned non-finite in the last optimizer step"
    return timer, {"train_acc": train_acc, "val_acc": val_acc}, diverged_at


if __name__ == "__main__":
    args = parse_args()
    torch.set_float32_matmul_precision(args.matmul_precision)
    L.seed_everything(123, verbose=False)

    # 1 Launch Fabric
    fabric = L.Fabric(
        accelerator=args.accelerator,
        devices=args.devices,
        strategy=args.strategy,
        num_nodes=args.num_nodes,
        precision=PRECISION,
    )
    fabric.launch()
    print_setup(args, PRECISION, fabric.device)  # versions and device; stops if the device lacks this precision

    # 2 Load the data and the pretrained weights (downloaded once, then cached)
    train_loader, val_loader, test_loader, num_classes = get_dataloaders(args)
    weights = pretrained_weights(args)  # ImageNet weights; None for --quick and --synthetic (random initial weights)

    # 3 Build the model directly on the device and in the target precision, with a new head for our classes
    memory_baseline = reset_peak_memory(fabric.device)
    with fabric.init_module():
        model = torchvision.models.get_model(args.model, weights=weights)
        model.heads.head = torch.nn.Linear(model.heads.head.in_features, num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)
    model, optimizer = fabric.setup(model, optimizer)
    train_loader, val_loader, test_loader = fabric.setup_dataloaders(train_loader, val_loader, test_loader)
    dtypes = watch_dtypes(model, PRECISION, fabric.device)  # filled, and printed, by the first forward pass
    # --track-updates: a copy of the initial weights in CPU memory, to count the weights that training changes
    initial = {name: w.detach().cpu().clone() for name, w in model.named_parameters()} if args.track_updates else None

    # 4 Finetune; the training time includes the per-epoch validation, as in the reference
    start = time.perf_counter()
    timer, accuracies, diverged_at = train(args, model, optimizer, scheduler, train_loader, val_loader, num_classes,
                                           fabric)
    train_time = time.perf_counter() - start

    # 5 Evaluate on the test set; report time, memory and accuracy, and append the run's record to --results
    accuracies["test_acc"] = compute_accuracy(model, test_loader) if diverged_at is None else float("nan")
    report(args, PRECISION, fabric.device, timer=timer, train_time=train_time, memory_baseline=memory_baseline,
           dtypes=dtypes, accuracies=accuracies, diverged_at=diverged_at, model=model, initial_weights=initial)
    fabric.barrier()  # every process gets here before any exits: one that leaves first can abort the others' teardown
    if diverged_at is not None:
        fabric.print(f"error: training diverged: {diverged_at}; {divergence_advice(dtypes)}", file=sys.stderr)
        sys.exit(DIVERGED_EXIT_CODE)
