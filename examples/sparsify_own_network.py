"""Sparsify your own network on your own tensors from Python (no Prefect, no MLflow, no files).

    python examples/sparsify_own_network.py            # reads MNIST from $GEODESIC_DATA_DIR (or ./data)

Any nn.Module and any tensors work: here a small MLP trained for 3 epochs on 5,000 MNIST images, then
sparsified to 95% zeros along the geodesic; the path comes back as a pandas DataFrame and is plotted.
"""

from torch import nn

from geodesic_core import TrainConfig, evaluate, load_split, train
from geodesic_core.api import sparsify

train_set, test_set = load_split("mnist", train=True), load_split("mnist", train=False)  # or your own tensors
x, y = train_set.x[:5_000], train_set.y[:5_000]
net = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
train(net, (x, y), TrainConfig(epochs=3, lr=0.05, seed=0))
dense_accuracy, _ = evaluate(net, (test_set.x[:2000], test_set.y[:2000]))

result = sparsify(net, x, 95, test=(test_set.x[:2000], test_set.y[:2000]))
df = result.frame()
print(df.tail())
print(f"{result.sparsity:.2f}% zeros: test accuracy {result.test_accuracy:.2f}% (dense {dense_accuracy:.2f}%), "
      f"{result.seconds:.1f} s")
ax = df.plot(x="step", y="test_accuracy", title="accuracy along the geodesic")
ax.figure.savefig("sparsify_path.png")
