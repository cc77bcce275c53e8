"""Export a scikit-learn pipeline as users do (skl2onnx, default options:
ZipMap on) and write a reference CSV for `drover model push`.

    pip install scikit-learn skl2onnx onnxruntime numpy
    python3 sklearn_iris.py          # writes iris.onnx and iris.csv here
"""
import numpy as np
from skl2onnx import to_onnx
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

iris = load_iris()
X = iris.data.astype(np.float32)
y = iris.target_names[iris.target]  # string labels: setosa, versicolor, virginica
pipe = make_pipeline(StandardScaler(), RandomForestClassifier(n_estimators=20, random_state=0))
pipe.fit(X, y)

onx = to_onnx(pipe, X[:1])  # default options: ZipMap output, Scaler + TreeEnsembleClassifier
with open("iris.onnx", "wb") as f:
    f.write(onx.SerializeToString())

with open("iris.csv", "w") as f:
    f.write("sepal_length,sepal_width,petal_length,petal_width,label\n")
    for row, label in zip(X, y):
        f.write(",".join(f"{v:g}" for v in row) + f",{label}\n")
print("wrote iris.onnx and iris.csv")
