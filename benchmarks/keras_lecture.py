"""The lecture notes' Keras code, as close to verbatim as a script can be: the baseline.

Runs inside benchmarks/.venv-keras (TensorFlow for CPU; see setup_keras_env.sh), never in the
cnnlab environment. The model, compile, fit and evaluate lines are the notes' own. Changes,
all outside the timed model code:
  * data comes from .npy files named on the command line (the notes' MNIST cell calls
    tf.keras.datasets.mnist.load_data(), which downloads; bench_train.py exports the same
    arrays beforehand; the notes' NEU cell already np.load()s NEU_*.npy files);
  * pixels are divided by 255 for both tasks (the notes do it for MNIST; their NEU .npy files
    are not shown, the exported ones are raw uint8);
  * --seed sets Keras' seeds; fit prints one line per epoch (verbose=2: the output goes to a
    log, not a notebook); evaluate is silent; the notes' plotting/prediction cells are left out;
  * the last stdout line is one JSON object with fit time, images/s and test accuracy
    (the whole-process wall time is measured by the driver around this process).

Usage (normally run by bench_train.py):
    benchmarks/.venv-keras/bin/python benchmarks/keras_lecture.py mnist \
        train_x.npy train_y.npy test_x.npy test_y.npy --epochs 3 --batch-size 50
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # silence TF's C++ start-up chatter

import numpy as np
import tensorflow as tf


def mnist_model():
    """The notes' MNIST CNN, verbatim."""
    model = tf.keras.models.Sequential([
        tf.keras.layers.Input(shape = (28, 28, 1)),
        tf.keras.layers.Conv2D(filters = 32,
                               kernel_size = (3,3),
                               activation = 'relu',
                               padding = 'SAME'),
        tf.keras.layers.MaxPool2D((2,2)),
        tf.keras.layers.Conv2D(filters = 64,
                               kernel_size = (3,3),
                               activation = 'relu',
                               padding = 'SAME'),
        tf.keras.layers.MaxPool2D((2,2)),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(units = 128, activation = 'relu'),
        tf.keras.layers.Dense(units = 10, activation = 'softmax')
    ])  # fmt: skip
    return model


def neu_model():
    """The notes' NEU steel-defect CNN, verbatim."""
    model = tf.keras.models.Sequential([
        tf.keras.layers.Input(shape = (200, 200, 1)),
        tf.keras.layers.Conv2D(filters = 32,
                               kernel_size = (3,3),
                               activation = 'relu',
                               padding = 'SAME'),
        tf.keras.layers.MaxPool2D((2,2)),
        tf.keras.layers.Conv2D(filters = 64,
                               kernel_size = (3,3),
                               activation = 'relu',
                               padding = 'SAME'),
        tf.keras.layers.MaxPool2D((2,2)),
        tf.keras.layers.Conv2D(filters = 128,
                               kernel_size = (3,3),
                               activation = 'relu',
                               padding = 'SAME'),
        tf.keras.layers.MaxPool2D((2,2)),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(units = 128, activation = 'relu'),
        tf.keras.layers.Dense(units = 6, activation = 'softmax')
    ])  # fmt: skip
    return model


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("task", choices=["mnist", "neu"])
    p.add_argument("train_x")
    p.add_argument("train_y")
    p.add_argument("test_x")
    p.add_argument("test_y")
    p.add_argument("--epochs", type=int, default=None, help="default: the notes' (3 / 10)")
    p.add_argument("--batch-size", type=int, default=50, help="the notes' 50")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", type=int, default=2, help="Keras fit verbosity (2: a line/epoch)")
    args = p.parse_args()
    epochs = args.epochs or {"mnist": 3, "neu": 10}[args.task]
    tf.keras.utils.set_random_seed(args.seed)

    # Load data (the notes: mnist.load_data() / np.load('NEU_*.npy'))
    train_x = np.load(args.train_x, allow_pickle=False)
    train_y = np.load(args.train_y, allow_pickle=False)
    test_x = np.load(args.test_x, allow_pickle=False)
    test_y = np.load(args.test_y, allow_pickle=False)
    train_x, test_x = train_x / 255.0, test_x / 255.0
    side = {"mnist": 28, "neu": 200}[args.task]
    train_x = train_x.reshape((train_x.shape[0], side, side, 1))
    test_x = test_x.reshape((test_x.shape[0], side, side, 1))

    # Define the CNN structure
    model = mnist_model() if args.task == "mnist" else neu_model()

    # Optimizer and loss
    model.compile(optimizer = 'adam',
                  loss = 'sparse_categorical_crossentropy',
                  metrics = ['accuracy'])  # fmt: skip

    # Training
    t0 = time.perf_counter()
    model.fit(train_x, train_y, batch_size=args.batch_size, epochs=epochs, verbose=args.verbose)
    fit_s = time.perf_counter() - t0

    # Testing or evaluating
    t0 = time.perf_counter()
    test_loss, test_acc = model.evaluate(test_x, test_y, verbose=0)
    eval_s = time.perf_counter() - t0

    images = int(train_x.shape[0]) * epochs
    threading = tf.config.threading
    print(
        json.dumps(
            {
                "contestant": "keras",
                "task": args.task,
                "epochs": epochs,
                "batch_size": args.batch_size,
                "n_train": int(train_x.shape[0]),
                "n_test": int(test_x.shape[0]),
                "fit_s": fit_s,
                "eval_s": eval_s,
                "images_per_s": images / fit_s,
                "test_accuracy": float(test_acc),
                "test_loss": float(test_loss),
                "versions": {
                    "tensorflow": tf.__version__,
                    "keras": tf.keras.__version__,
                    "numpy": np.__version__,
                },
                "threads": {
                    "intra_op": threading.get_intra_op_parallelism_threads(),
                    "inter_op": threading.get_inter_op_parallelism_threads(),
                    "note": "0 = TensorFlow's default (all logical CPUs)",
                    "cpu_count": os.cpu_count(),
                },
            }
        )
    )


if __name__ == "__main__":
    main()
