# Finetune a vision transformer (torchvision ViT) on CIFAR-10 and report time, memory and accuracy.
# Lightning Fabric at the PRECISION set below; diff this script with its neighbours to see the one change.
import lightning as L
import torch
import torch.nn.functional as F

from local_utilities import TrainingMonitor, build_model, compute_accuracy, get_dataloaders, parse_args

PRECISION = "16-true"  # everything in float16: weights, activations, gradients, optimizer state


def train(num_epochs, model, optimizer, scheduler, train_loader, val_loader, fabric, monitor):
    for epoch in range(num_epochs):
        model.train()
        for features, targets in monitor.batches(train_loader):
            logits = model(features)
            loss = F.cross_entropy(logits, targets)
            monitor.step(loss, logits, targets)  # training accuracy; stops at once on a NaN loss

            optimizer.zero_grad(set_to_none=True)
            fabric.backward(loss)
            optimizer.step()

        scheduler.step()
        monitor.end_epoch(compute_accuracy(model, val_loader))


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

    # 2 Load the data
    train_loader, val_loader, test_loader, num_classes = get_dataloaders(args)

    # 3 Build the model directly on the device and in the target precision
    monitor = TrainingMonitor(args, PRECISION, fabric.device)  # prints the setup; notes memory before the model
    with fabric.init_module():
        model = build_model(args, num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate, eps=1e-4)  # 1e-8 rounds to 0 in float16
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)
    model, optimizer = fabric.setup(model, optimizer)
    train_loader, val_loader, test_loader = fabric.setup_dataloaders(train_loader, val_loader, test_loader)
    monitor.watch(model)  # records the dtypes in effect; finds the first NaN if training diverges

    # 4 Finetune
    train(args.epochs, model, optimizer, scheduler, train_loader, val_loader, fabric, monitor)

    # 5 Evaluate on the test set and report time, memory and accuracy
    monitor.report(compute_accuracy(model, test_loader))
