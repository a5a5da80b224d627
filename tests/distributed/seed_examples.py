"""Every usage example of the seed's "Logger Mixins" page (shared/seed/loggers.md), runnable.

Run under torchrun by tests/distributed/test_seed_examples.py:

    torchrun --standalone --nproc_per_node=2 tests/distributed/seed_examples.py --root DIR

Each example's code is copied as written; only the imports are changed (``dream_trainer...`` ->
``distlog...``, ``tensorboardX`` -> ``torch.utils.tensorboard``, and a 10-line ``make_grid`` for
``torchvision``, which is not installed here). What the examples leave undefined (a model, data,
``compute_loss``, ``grad_norm``...) is supplied by code marked ``# support``. Examples that define
the same method (two ``training_step``, two ``on_validation_epoch_end``) live in different
trainers; each trainer is a separate run.

Every rank records the raw scalars it logs, per flush, in ``DIR/records-<trainer>-<rank>.json``,
so the test can compute each row independently and compare it with what was written.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402
import torch.utils.tensorboard as tensorboardX  # noqa: E402  (was: import tensorboardX)
import wandb  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from distlog.mixins import (  # noqa: E402  (was: dream_trainer.trainer.mixins)
    LoggerConfigMixin,
    LoggerMixin,
    LoggingParameters,
    WandBLoggerConfigMixin,
    WandBLoggerMixin,
    WandbLoggingParameters,
)
from distlog.trainer import BaseTrainer, BaseTrainerConfig, Callback  # noqa: E402


# support: torchvision.utils.make_grid, for the custom TensorBoard logger example
def _make_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2) -> torch.Tensor:
    b, c, h, w = images.shape
    ncol = min(nrow, b)
    nrows = (b + ncol - 1) // ncol
    grid = torch.zeros(c, nrows * (h + padding) + padding, ncol * (w + padding) + padding)
    for i in range(b):
        r, col = divmod(i, ncol)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = images[i]
    return grid


torchvision = types.SimpleNamespace(utils=types.SimpleNamespace(make_grid=_make_grid))


# ---------------------------------------------------------------------------------- support
class TinyNet(nn.Module):
    """support: classifies 3x8x8 images into 3 classes; has what the examples call."""

    def __init__(self, hidden_dim: int = 16, num_classes: int = 3) -> None:
        super().__init__()
        self.embeddings = nn.Linear(3 * 8 * 8, hidden_dim)
        self.head = nn.Linear(hidden_dim, num_classes)
        self._last_input: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._last_input = x.detach()
        return self.head(torch.relu(self.embeddings(x.flatten(1))))

    def get_attention_maps(self) -> torch.Tensor:
        assert self._last_input is not None
        return self._last_input.mean(dim=1, keepdim=True)  # (B, 1, 8, 8) in [0, 1]

    def generate(self, num_samples: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(3)
        return torch.rand(num_samples, 3, 4, 8, 8, generator=g)  # (B, C, T, H, W) in [0, 1]


def make_dataset(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 8, 8, generator=g)
    labels = images.mean(dim=(2, 3)).argmax(dim=1)
    return TensorDataset(images, labels)


@dataclass(kw_only=True)
class SeedConfig(BaseTrainerConfig, WandBLoggerConfigMixin):
    num_layers: int = 2
    hidden_dim: int = 16
    num_heads: int = 2
    learning_rate: float = 0.05
    batch_size: int = 8
    num_epochs: int = 3
    dataset_name: str = "synthetic-8x8"


class Recorder:
    """support: keeps each rank's raw scalars per flush window, for the test's reference."""

    def log_scalar(self, name, value, reduce="mean", **kwargs):
        self._record(name, value, reduce, kwargs.get("weight"))
        return super().log_scalar(name, value, reduce, **kwargs)

    def log_dict(self, logs, reduce="mean", **kwargs):
        for name, value in logs.items():
            self._record(name, value, reduce, kwargs.get("weight"))
        return super().log_dict(logs, reduce, **kwargs)

    def _record(self, name, value, reduce, weight):
        as_float = float(value.detach().float().item() if torch.is_tensor(value) else value)
        self.__dict__.setdefault("_pending", []).append(
            (name, as_float, reduce, 1.0 if weight is None else float(weight))
        )

    def flush_logs(self, step=None):
        row = super().flush_logs(step)
        self.__dict__.setdefault("windows", []).append(
            (self.global_step if step is None else step, self.__dict__.pop("_pending", []))
        )
        return row

    def dump(self, root: str, name: str) -> None:
        path = Path(root) / f"records-{name}-{self.world.rank}.json"
        path.write_text(json.dumps(self.__dict__.get("windows", [])))


class SeedSupport:
    """support: model, data and the helpers the examples call but do not define."""

    class_names = ["red", "green", "blue"]

    def configure(self):
        self.model = TinyNet(self.config.hidden_dim)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.config.learning_rate)
        self.train_dataset = make_dataset(400, seed=0)
        self.val_dataset = make_dataset(48, seed=1)
        self.train_losses: list[float] = []
        self.val_losses: list[float] = []
        self.confusion_matrix = torch.zeros(3, 3)
        self._step_started = time.perf_counter()

    def train_dataloader(self):
        return DataLoader(self.train_dataset, batch_size=self.config.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_dataset, batch_size=self.config.batch_size)

    def compute_loss(self, batch):
        images, labels = batch
        return nn.functional.cross_entropy(self.model(images), labels)

    def create_prediction_viz(self, images, predictions, labels):
        return images  # (B, C, H, W) in [0, 1]

    def plot_confusion_matrix(self, cm):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        ax.imshow(cm.numpy())
        return fig

    def create_visualization(self, trainer):
        return visualization(trainer)


def visualization(trainer):
    """support: the figure the callback example logs."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot(trainer.train_losses)
    return fig


class TrackLosses(Callback):
    """support: fills train_losses, val_losses and the confusion matrix the plot example uses."""

    def on_train_batch_end(self, trainer, batch, batch_idx, outputs):
        trainer.train_losses.append(outputs["loss"].item())

    def on_validation_epoch_end(self, trainer):
        images, labels = trainer.val_dataset.tensors
        with torch.no_grad():
            logits = trainer.model(images)
        trainer.val_losses.append(nn.functional.cross_entropy(logits, labels).item())
        for t, p in zip(labels, logits.argmax(dim=1), strict=True):
            trainer.confusion_matrix[t, p] += 1


# ------------------------------------------------------ "Basic Logging" and the examples
class MyTrainer(Recorder, SeedSupport, BaseTrainer, WandBLoggerMixin):
    # "Model Tracking" and "Configuration Logging" (both are __init__; one body after the other)
    def __init__(self, config):
        super().__init__(config)

        # Watch model for gradient and parameter tracking
        self.log_model(
            models=[self.model],  # List of models to track
            log="all",  # Log gradients and parameters
            log_freq=100,  # Log every 100 batches
        )

        # Log full configuration
        self.log_config(
            {
                "model": {
                    "architecture": "transformer",
                    "num_layers": self.config.num_layers,
                    "hidden_dim": self.config.hidden_dim,
                    "num_heads": self.config.num_heads,
                },
                "training": {
                    "learning_rate": self.config.learning_rate,
                    "batch_size": self.config.batch_size,
                    "num_epochs": self.config.num_epochs,
                    "optimizer": "AdamW",
                    "scheduler": "CosineAnnealing",
                },
                "data": {
                    "dataset": self.config.dataset_name,
                    "num_train_samples": len(self.train_dataset),
                    "num_val_samples": len(self.val_dataset),
                },
            }
        )

    # "Basic Logging"
    def training_step(self, batch, batch_idx):
        loss = self.compute_loss(batch)
        # support: the example uses these without defining them
        grad_norm = (
            sum(p.grad.norm() ** 2 for p in self.model.parameters() if p.grad is not None) ** 0.5
        )
        samples_per_sec = len(batch[0]) / max(time.perf_counter() - self._step_started, 1e-9)
        self._step_started = time.perf_counter()

        # Log scalar values
        self.log_scalar("train/loss", loss)
        self.log_scalar("train/learning_rate", self.optimizer.param_groups[0]["lr"])

        # Log multiple values at once
        self.log_dict(
            {
                "train/batch_loss": loss,
                "train/grad_norm": grad_norm,
                "train/throughput": samples_per_sec,
            }
        )

        return {"loss": loss}

    # "Image Logging"
    def validation_step(self, batch, batch_idx):
        images, labels = batch
        predictions = self.model(images)

        # Log a batch of images with predictions
        if batch_idx == 0:  # Log first batch only
            # Create visualization
            viz_images = self.create_prediction_viz(images, predictions, labels)

            self.log_images(
                viz_images,  # (B, C, H, W) tensor
                caption=[f"Pred: {p}, True: {l}" for p, l in zip(predictions, labels)],  # noqa: B905, E741
                desc="val/predictions",
            )

        # Log attention maps
        if hasattr(self.model, "get_attention_maps"):
            attention_maps = self.model.get_attention_maps()
            self.log_images(attention_maps, desc="val/attention_maps")

    # "Video Logging"
    def on_validation_epoch_end(self):
        # Generate video samples
        generated_videos = self.model.generate(num_samples=4)  # (B, C, T, H, W)

        self.log_videos(
            generated_videos,
            caption=["Sample 1", "Sample 2", "Sample 3", "Sample 4"],
            desc="val/generated_videos",
            fps=30,
        )

    # "Histogram Logging"
    def on_train_epoch_end(self):
        # Log weight distributions
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                self.log_histogram(param.data, desc=f"weights/{name}")

                if param.grad is not None:
                    self.log_histogram(param.grad, desc=f"gradients/{name}")

    # "Plot Logging"
    def create_loss_curve(self):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        ax.plot(self.train_losses, label="Train")
        ax.plot(self.val_losses, label="Validation")
        ax.set_xlabel("Epoch")
        ax.set_ylabel("Loss")
        ax.legend()

        return fig

    def on_train_end(self):
        # Log matplotlib figure
        loss_curve = self.create_loss_curve()
        self.log_plot(loss_curve, desc="training/loss_curve")

        # Log confusion matrix
        cm_figure = self.plot_confusion_matrix(self.confusion_matrix)
        self.log_plot(cm_figure, desc="val/confusion_matrix")


# "Integration with Callbacks"
class LoggingCallback(Callback):
    def on_train_batch_start(self, trainer, batch, batch_idx):  # support: sets start_time
        self.start_time = time.time()

    def on_train_batch_end(self, trainer, batch, batch_idx, outputs):
        # Access trainer's logging methods
        if hasattr(trainer, "log_scalar"):
            trainer.log_scalar("callback/batch_time", time.time() - self.start_time)

    def on_validation_epoch_end(self, trainer):
        # Log complex visualizations
        if hasattr(trainer, "log_plot"):
            fig = self.create_visualization(trainer)
            trainer.log_plot(fig, desc="callback/visualization")

    def create_visualization(self, trainer):  # support
        return visualization(trainer)


# ------------------------------------------- "Best Practices" and "Table Logging"
class BestPracticesTrainer(Recorder, SeedSupport, BaseTrainer, WandBLoggerMixin):
    # "1. Conditional Logging"
    def training_step(self, batch, batch_idx):
        loss = self.compute_loss(batch)  # support
        # Only log every N steps to reduce overhead
        if self.global_step % self.logging_parameters.log_every_n_steps == 0:
            self.log_scalar("train/loss", loss)

        # Log expensive metrics less frequently
        if self.global_step % 100 == 0:
            self.log_histogram(self.model.embeddings.weight, "embeddings")
        return {"loss": loss}  # support

    # "Table Logging"
    def on_validation_epoch_end(self):
        # Create a table of predictions
        columns = ["image", "prediction", "ground_truth", "confidence"]
        data = []

        for batch in self.val_dataloader:
            images, labels = batch
            predictions = self.model(images)
            confidences = predictions.softmax(dim=-1).max(dim=-1).values

            for img, pred, label, conf in zip(images, predictions, labels, confidences):  # noqa: B905
                data.append(
                    [
                        wandb.Image(img),
                        self.class_names[pred.argmax()],
                        self.class_names[label],
                        conf.item(),
                    ]
                )

            if len(data) >= 100:  # Limit table size
                break

        self.log_table(columns=columns, data=data, desc="val/predictions_table")

    def validation_step(self, batch, batch_idx):  # support: runs the fragments below
        if batch_idx == 0:
            self.log_large_outputs(torch.rand(150, 3, 8, 8))

    def on_train_epoch_end(self):  # support: runs the fragments below
        self.distributed_training()
        self.organizing_logs()

    # "3. Memory Management"
    def log_large_outputs(self, outputs):
        # Detach and move to CPU to avoid memory issues
        if isinstance(outputs, torch.Tensor):
            outputs = outputs.detach().cpu()

        # Sample large outputs
        if len(outputs) > 100:
            indices = torch.randperm(len(outputs))[:100]
            outputs = outputs[indices]

        self.log_images(outputs, desc="samples")

    # "2. Distributed Training"
    def distributed_training(self):
        value = 7.0 + self.current_epoch  # support
        # Only rank 0 logs to avoid duplicates
        if self.world.is_global_zero:
            # This check is handled automatically by WandBLoggerMixin
            self.log_scalar("metric", value)

    # "4. Organizing Logs"
    def organizing_logs(self):
        # support: the values the fragment names
        train_loss, train_acc, lr = 0.5 + self.world.rank, 0.75, 0.05
        val_loss, val_acc = 0.25 * (1 + self.world.rank), 0.5
        num_params = sum(p.numel() for p in self.model.parameters())
        grad_norm = 1.0 + self.world.rank

        # Use "/" to create sections in WandB
        self.log_scalar("train/loss", train_loss)
        self.log_scalar("train/accuracy", train_acc)
        self.log_scalar("train/learning_rate", lr)

        self.log_scalar("val/loss", val_loss)
        self.log_scalar("val/accuracy", val_acc)

        self.log_scalar("model/num_parameters", num_params)
        self.log_scalar("model/grad_norm", grad_norm)


# ------------------------------------------------------- "Custom Logger Implementation"
class TensorBoardLoggerMixin(LoggerMixin):
    def __init__(self, config):
        super().__init__(config)

        if self.world.is_global_zero and self.logging_parameters.enabled:
            self.writer = tensorboardX.SummaryWriter(log_dir=f"runs/{self.experiment}")
        else:
            self.writer = None

    def log_dict(self, logs: dict[str, Any]):
        if self.writer is None:
            return

        for key, value in logs.items():
            if isinstance(value, (int, float, torch.Tensor)):
                self.writer.add_scalar(key, value, self.global_step)

    def log_images(self, images, caption=None, desc=None):
        if self.writer is None:
            return

        # Convert to grid
        grid = torchvision.utils.make_grid(images)
        self.writer.add_image(desc or "images", grid, self.global_step)

    def log_config(self, config):
        if self.writer is None:
            return

        # Log as text
        self.writer.add_text("config", str(config), 0)


@dataclass(kw_only=True)
class TBConfig(BaseTrainerConfig, LoggerConfigMixin):
    learning_rate: float = 0.05
    hidden_dim: int = 16
    batch_size: int = 8


class TBTrainer(SeedSupport, BaseTrainer, TensorBoardLoggerMixin):  # support: uses the mixin
    def training_step(self, batch, batch_idx):
        loss = self.compute_loss(batch)
        self.log_dict({"train/loss": loss})
        if batch_idx == 0:
            self.log_images(batch[0][:4], desc="train/inputs")
        return {"loss": loss}

    def on_train_end(self):
        self.log_config(self.config)
        if self.writer is not None:
            self.writer.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--steps", type=int, default=120)
    args = parser.parse_args()
    os.chdir(args.root)

    def params(name: str, every: int) -> WandbLoggingParameters:
        return WandbLoggingParameters(
            log_every_n_steps=every,
            run_dir=f"local/{name}",
            dir="wandb_dir",
            project="seed",
            tags=[name],
        )

    trainer = MyTrainer(
        SeedConfig(
            experiment="examples",
            max_steps=args.steps,
            val_every_n_epochs=2,
            logging_parameters=params("examples", 10),
            callbacks=[TrackLosses(), LoggingCallback()],
        )
    )
    trainer.fit()
    trainer.dump(args.root, "examples")

    best = BestPracticesTrainer(
        SeedConfig(
            experiment="best",
            max_steps=30,
            max_epochs=2,
            logging_parameters=params("best", 5),
            callbacks=[TrackLosses()],
        )
    )
    best.fit()
    best.dump(args.root, "best")

    tb = TBTrainer(
        TBConfig(
            experiment="tensorboard",
            max_steps=6,
            logging_parameters=LoggingParameters(log_every_n_steps=3, run_dir="local/tensorboard"),
        )
    )
    tb.fit()


if __name__ == "__main__":
    main()
