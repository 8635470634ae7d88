import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset
import engine as pl

class SimpleModel(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(10, 1)
    def forward(self, x):
        return self.linear(x)
    def training_step(self, batch, batch_idx):
        x, y = batch
        y_hat = self(x)
        loss = nn.functional.mse_loss(y_hat, y.unsqueeze(1))
        self.log('train_loss', loss)
        return loss
    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)

X = torch.randn(1000, 10); y = torch.randn(1000)
dataloader = DataLoader(TensorDataset(X, y), batch_size=32)
model = SimpleModel()
trainer = pl.Trainer(max_epochs=3, accelerator='auto')
trainer.fit(model, dataloader)
