"""A torch multi-layer perceptron with scikit-learn manners, trained epoch by epoch.

``MLPModel`` stores its parameters in the constructor and learns in ``fit``;
``begin`` + ``train_epoch`` let a Tune trial report after every epoch so ASHA
can stop a poor one early. Training is deterministic for a given seed: the
weights, the shuffling and dropout draw from a seeded generator inside
``torch.random.fork_rng`` (the caller's global RNG is left alone) and torch
runs on one thread while fitting (summation order does not change).

This module is pickled by value into logged models: it imports nothing from
lakeloop.
"""

from __future__ import annotations

import contextlib

import numpy as np
from sklearn.base import BaseEstimator


@contextlib.contextmanager
def _deterministic(seed: int):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(threads)


def _network(n_in: int, n_out: int, hidden: int, layers: int, dropout: float):
    import torch.nn as nn

    blocks, width = [], n_in
    for _ in range(layers):
        blocks += [nn.Linear(width, hidden), nn.ReLU()]
        if dropout > 0:
            blocks.append(nn.Dropout(dropout))
        width = hidden
    blocks.append(nn.Linear(width, n_out))
    return nn.Sequential(*blocks)


class MLPModel(BaseEstimator):
    """Classifier or regressor (``task``) over a dense float matrix (the pipeline scales it)."""

    def __init__(self, task="classification", hidden=64, layers=2, dropout=0.1, lr=1e-3,
                 weight_decay=1e-5, batch_size=64, epochs=20, seed=0):
        self.task = task
        self.hidden = hidden
        self.layers = layers
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.epochs = epochs
        self.seed = seed

    # -- training ------------------------------------------------------------
    def _targets(self, y):
        import torch

        if self.task == "classification":
            index = {c: i for i, c in enumerate(self.classes_)}
            return torch.as_tensor(np.fromiter((index[v] for v in np.asarray(y)), dtype=np.int64))
        y = np.asarray(y, dtype=np.float64)
        return torch.as_tensor(((y - self.y_mean_) / self.y_scale_).astype(np.float32)).reshape(-1, 1)

    def begin(self, X, y):
        """Set up the network and optimiser for ``X``/``y`` (no epoch run yet)."""
        import torch

        X = np.asarray(X, dtype=np.float32)
        if self.task == "classification":
            self.classes_ = np.unique(np.asarray(y))
            n_out = len(self.classes_)
        else:
            yf = np.asarray(y, dtype=np.float64)
            self.y_mean_ = float(yf.mean())
            self.y_scale_ = float(yf.std()) or 1.0
            n_out = 1
        self.n_features_in_ = X.shape[1]
        with _deterministic(self.seed):
            self.net_ = _network(X.shape[1], n_out, int(self.hidden), int(self.layers), float(self.dropout))
        self.optimizer_ = torch.optim.AdamW(self.net_.parameters(), lr=float(self.lr),
                                            weight_decay=float(self.weight_decay))
        self.epochs_done_ = 0
        self._X = torch.as_tensor(X)
        self._y = self._targets(y)
        return self

    def train_epoch(self) -> float:
        """One pass over the data in seeded random batches; returns the mean training loss."""
        import torch
        import torch.nn.functional as F

        loss_fn = F.cross_entropy if self.task == "classification" else F.mse_loss
        n = len(self._X)
        with _deterministic(self.seed * 100_003 + self.epochs_done_):
            order = torch.randperm(n)
            self.net_.train()
            total = 0.0
            for start in range(0, n, int(self.batch_size)):
                idx = order[start:start + int(self.batch_size)]
                self.optimizer_.zero_grad()
                loss = loss_fn(self.net_(self._X[idx]), self._y[idx])
                loss.backward()
                self.optimizer_.step()
                total += float(loss.detach()) * len(idx)
        self.epochs_done_ += 1
        return total / max(n, 1)

    def finish(self):
        """Drop the training tensors and optimiser (they need not be pickled)."""
        for attr in ("_X", "_y", "optimizer_"):
            self.__dict__.pop(attr, None)
        return self

    def fit(self, X, y):
        self.begin(X, y)
        for _ in range(int(self.epochs)):
            self.train_epoch()
        return self.finish()

    # -- prediction ----------------------------------------------------------
    def _forward(self, X):
        import torch

        X = torch.as_tensor(np.asarray(X, dtype=np.float32))
        self.net_.eval()
        with torch.no_grad():
            return self.net_(X)

    def predict_proba(self, X):
        import torch

        if self.task != "classification":
            raise AttributeError("predict_proba is only available for classification")
        proba = torch.softmax(self._forward(X).double(), dim=1).numpy()
        return proba / proba.sum(axis=1, keepdims=True)

    def predict(self, X):
        if self.task == "classification":
            return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
        out = self._forward(X).numpy().reshape(-1).astype(np.float64)
        return out * self.y_scale_ + self.y_mean_

    def __getstate__(self):
        state = dict(super().__getstate__())
        for attr in ("_X", "_y", "optimizer_"):
            state.pop(attr, None)
        return state
