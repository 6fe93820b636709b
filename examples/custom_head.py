"""A user-defined multi-task head plugged into MultiTaskModel, trained, saved and reloaded.

Run: python examples/custom_head.py [--impressions N]
"""

import argparse
import tempfile

import torch
from torch import nn

import recsys_mt as rm
from recsys_mt.data.synthetic import make_funnel_data


@rm.register("head", "example_gated_towers")
class GatedTowers(rm.Head):
    """A shared layer, then per task a sigmoid gate on the shared features and a linear tower.

    ``x [B, D]`` → shared ``[B, H]`` → per task ``g_t ⊙ h`` → logits ``[B, T]``.
    """

    def __init__(self, hidden: int = 64):
        super().__init__()
        self.hidden = hidden

    def build(self, in_dim: int, num_tasks: int) -> None:
        self.shared = nn.Sequential(nn.Linear(in_dim, self.hidden), nn.ReLU())
        self.gates = nn.Linear(in_dim, num_tasks * self.hidden)
        self.towers = nn.Parameter(torch.randn(num_tasks, self.hidden) * self.hidden**-0.5)
        self.bias = nn.Parameter(torch.zeros(num_tasks))
        self.num_tasks = num_tasks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.shared(x)  # [B, H]
        g = torch.sigmoid(self.gates(x)).view(-1, self.num_tasks, self.hidden)  # [B, T, H]
        return (g * h.unsqueeze(1) * self.towers).sum(-1) + self.bias  # [B, T]

    def to_config(self) -> dict:
        return {"hidden": self.hidden}


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--impressions", type=int, default=60_000)
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args(argv)
    train_df, val_df, test_df = make_funnel_data(
        n_users=800, n_items=400, n_impressions=args.impressions
    ).split()
    schema = rm.Schema(
        [
            rm.Sparse("user_id"),
            rm.Sparse("item_id"),
            rm.Sparse("category", dim=8),
            rm.Dense("price", transform="log1p"),
            rm.Sequence("hist_items", vocab_from="item_id", max_len=20),
        ],
        tasks=[rm.Task("ctr", label="click"), rm.Task("cvr", label="purchase", given="ctr")],
    )
    train = schema.fit_transform(train_df)
    torch.manual_seed(0)
    model = rm.MultiTaskModel(schema, head=GatedTowers(hidden=32))
    rm.Trainer(max_epochs=args.epochs, progress_bar=False).fit(
        model, train, schema.transform(val_df)
    )
    test = schema.transform(test_df)
    print(model.evaluate(test).query("metric == 'auc'").to_string(index=False))
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        again = rm.MultiTaskModel.from_pretrained(d)
        same = again.predict(test).equals(model.predict(test))
    print(f"reloaded model predicts identically: {same}")
    return same


if __name__ == "__main__":
    main()
