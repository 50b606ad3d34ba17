"""FuxiCTR side of bench/ctr_vs_peers.py: train DCN / DCNv2 with FuxiCTR on given CSV splits.

Runs ONLY inside the separate FuxiCTR environment (never imports strata):

    python3.11 -m venv bench/.venv-fuxictr
    bench/.venv-fuxictr/bin/pip install -r bench/requirements-fuxictr.txt
    bench/.venv-fuxictr/bin/python bench/fuxictr_peer.py --data DIR --model DCN --out result.json

The PyPI package `fuxictr` ships the library (FeatureProcessor + build_dataset, the Ray/Parquet
data loaders, `BaseModel` with its training loop, `FeatureEmbedding`, `CrossNet`, `CrossNetV2`,
`MLP_Block`) but not the model zoo, whose DCN and DCNv2 are thin compositions of those layers.
The two classes below assemble the same architecture from the same library layers (embedding ->
cross network in parallel with an MLP -> concatenation -> one linear logit), so training,
preprocessing and data loading are FuxiCTR's own. Criteo preprocessing follows FuxiCTR's Criteo
recipe (`CustomizedFeatureProcessor`: integers log^2-bucketed into categoricals, categories below
`min_categr_count` share OOV). The timed region is `model.fit` (training plus its per-epoch
validation), the same region our trainer reports as samples/s.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

import torch
from fuxictr.datasets.criteo import CustomizedFeatureProcessor
from fuxictr.features import FeatureMap
from fuxictr.preprocess import build_dataset
from fuxictr.pytorch.dataloaders import RankDataLoader
from fuxictr.pytorch.layers import CrossNet, CrossNetV2, FeatureEmbedding, MLP_Block
from fuxictr.pytorch.models import BaseModel
from fuxictr.pytorch.torch_utils import seed_everything
from torch import nn

INT_COLUMNS = [f"I{i}" for i in range(1, 14)]
CAT_COLUMNS = [f"C{i}" for i in range(1, 27)]


class PeerDCN(BaseModel):
    """DCN (cross v1) in parallel with an MLP, from FuxiCTR's layers and training loop."""

    def __init__(
        self,
        feature_map,
        model_id="DCN",
        embedding_dim=16,
        dnn_hidden_units=(),
        num_cross_layers=6,
        net_dropout=0.0,
        learning_rate=1e-3,
        v2=False,
        **kwargs,
    ):
        super().__init__(feature_map, model_id=model_id, **kwargs)
        self.embedding_layer = FeatureEmbedding(feature_map, embedding_dim)
        dim = feature_map.sum_emb_out_dim()
        self.crossnet = CrossNetV2(dim, num_cross_layers) if v2 else CrossNet(dim, num_cross_layers)
        self.dnn = MLP_Block(
            input_dim=dim,
            output_dim=None,
            hidden_units=list(dnn_hidden_units),
            hidden_activations="ReLU",
            output_activation=None,
            dropout_rates=net_dropout,
            batch_norm=False,
        )
        self.fc = nn.Linear(dim + dnn_hidden_units[-1], 1)
        self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
        self.reset_parameters()
        self.model_to_device()

    def forward(self, inputs):
        x = self.get_inputs(inputs)
        emb = self.embedding_layer(x, flatten_emb=True)  # (B, F*E)
        out = torch.cat([self.crossnet(emb), self.dnn(emb)], dim=-1)
        return {"y_pred": self.output_activation(self.fc(out))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="folder with train.csv, valid.csv, test.csv")
    ap.add_argument("--work", required=True, help="scratch folder for FuxiCTR's data and models")
    ap.add_argument("--model", choices=["DCN", "DCNv2"], required=True)
    ap.add_argument("--emb", type=int, default=16)
    ap.add_argument("--cross", type=int, default=6)
    ap.add_argument("--hidden", default="1024,1024")
    ap.add_argument("--dropout", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--patience", type=int, default=1)
    ap.add_argument("--min-count", type=int, default=10)
    ap.add_argument("--emb-reg", type=float, default=1e-5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    seed_everything(seed=args.seed)
    dataset_id = f"criteo_{args.model}"
    feature_cols = [
        {
            "name": INT_COLUMNS,
            "active": True,
            "dtype": "float",
            "type": "categorical",
            "preprocess": "convert_to_bucket",
            "fill_na": 0,
        },
        {"name": CAT_COLUMNS, "active": True, "dtype": "str", "type": "categorical", "fill_na": ""},
    ]
    label_col = {"name": "label", "dtype": "float"}
    t0 = time.perf_counter()
    encoder = CustomizedFeatureProcessor(
        feature_cols=feature_cols,
        label_col=label_col,
        dataset_id=dataset_id,
        data_root=args.work,
    )
    train, valid, test = build_dataset(
        encoder,
        train_data=os.path.join(args.data, "train.csv"),
        valid_data=os.path.join(args.data, "valid.csv"),
        test_data=os.path.join(args.data, "test.csv"),
        data_format="csv",
        sep=",",
        min_categr_count=args.min_count,
    )
    prep_s = time.perf_counter() - t0
    data_dir = os.path.join(args.work, dataset_id)
    feature_map = FeatureMap(dataset_id, data_dir)
    feature_map.load(os.path.join(data_dir, "feature_map.json"), {"embedding_dim": args.emb})
    params = {
        "model_root": os.path.join(args.work, "models"),
        "verbose": 0,
        "metrics": ["AUC", "logloss"],
        "optimizer": "adam",
        "loss": "binary_crossentropy",
        "monitor": "AUC",
        "monitor_mode": "max",
        "early_stop_patience": args.patience,
        "embedding_regularizer": args.emb_reg or None,
        "net_regularizer": None,
        "gpu": -1,
    }
    os.makedirs(os.path.join(params["model_root"], dataset_id), exist_ok=True)
    hidden = tuple(int(h) for h in args.hidden.split(","))
    model = PeerDCN(
        feature_map,
        model_id=args.model,
        embedding_dim=args.emb,
        dnn_hidden_units=hidden,
        num_cross_layers=args.cross,
        net_dropout=args.dropout,
        learning_rate=args.lr,
        v2=args.model == "DCNv2",
        **params,
    )
    train_gen, valid_gen = RankDataLoader(
        feature_map,
        stage="train",
        train_data=train,
        valid_data=valid,
        batch_size=args.batch,
        shuffle=True,
        data_format="parquet",
    )
    epochs_run = 0
    inner = model.train_epoch

    def counted(gen):  # count epochs actually run (early stopping may end the loop)
        nonlocal epochs_run
        epochs_run += 1
        return inner(gen)

    model.train_epoch = counted
    t1 = time.perf_counter()
    model.fit(train_gen, epochs=args.epochs, validation_data=valid_gen)
    fit_s = time.perf_counter() - t1
    test_gen = RankDataLoader(
        feature_map,
        stage="test",
        test_data=test,
        batch_size=args.batch,
        shuffle=False,
        data_format="parquet",
    )
    res = model.evaluate(test_gen)
    n_train = train_gen.num_samples
    out = {
        "system": "fuxictr",
        "model": args.model,
        "auc": float(res["AUC"]),
        "logloss": float(res["logloss"]),
        "train_rows": int(n_train),
        "test_rows": int(test_gen.num_samples),
        "epochs_run": epochs_run,
        "fit_seconds": fit_s,
        "samples_per_s": n_train * epochs_run / fit_s,
        "preprocess_seconds": prep_s,
        "params": model.count_parameters(),
        "torch_threads": torch.get_num_threads(),
    }
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
