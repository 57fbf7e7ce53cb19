"""Write the chapter notebooks (PyTorch, TensorFlow/Keras, MXNet Gluon, JAX/Flax) from one list of cells.

Most of a notebook is the same in every framework (the spec, the parameter counts, training through the
shared driver, the cross-framework check); only the cells that show framework objects differ. Writing
the cells once here keeps the notebooks from drifting apart. Edit this file, then run

    python notebooks/make_notebooks.py          # rewrite the .ipynb files (no outputs)
    python notebooks/make_notebooks.py --check  # exit 1 if a committed notebook differs from this file

``tests/test_notebooks.py`` runs the check too. The notebooks are stored without outputs or execution
counts, and every cell has a fixed id, so regenerating an unchanged notebook changes no byte.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

#: Cell tags the tests look for: the parameter cell (papermill's name) and the cells whose output they check.
PARAMETERS, SHAPE_WALK, CURVES, PARITY = "parameters", "shape-walk", "curves", "parity"


def _src(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


# -- what differs between the frameworks ---------------------------------------------------------------
FRAMEWORKS = {
    "torch": dict(
        file="nin_pytorch.ipynb",
        title="PyTorch",
        module="backends/torch.py",
        imports="import torch",
        render_functions=("_conv_relu", "_render"),
        step_method="train_step",
        rendering=_src("""
            The PyTorch rendering is an `nn.Sequential` whose children are named after the spec's layers
            (`nin1`, `pool1`, …), so `model.nin1` is the first block and `state_dict()` keys are the canonical
            weight names. Tensors are NCHW, as in the chapter."""),
        block=_src("""
            model = backend.build_model(spec, init=INIT, seed=0)
            # the first NiN block as PyTorch holds it: an 11x11 conv, then two 1x1 convs, each with ReLU
            model.nin1"""),
        model=_src("""
            print(model)
            print(f"{backend.count_params(model):,} parameters (the spec counts {spec.num_params:,})")"""),
        walk=_src("""
            X = torch.rand(1, 1, 224, 224, device=backend.device())
            model.eval()
            with torch.no_grad():
                for (name, layer), info in zip(model.named_children(), walk):
                    X = layer(X)
                    print(f"{name:<8} {type(layer).__name__:<18} output shape: {str(tuple(X.shape)):<17} "
                          f"params {info.params:>9,}  multiply-adds {info.macs:>12,}")
                    assert tuple(X.shape) == info.nchw, (name, tuple(X.shape), info.nchw)"""),
        step=_src("""
            The training loop is shared by the notebooks (`nin_multi.train.train`: data order, metrics,
            checkpoints, the plot); the PyTorch part is the backend's `Trainer.train_step`, the chapter's
            `loss.backward()` and `optimizer.step()`:"""),
    ),
    "tensorflow": dict(
        file="nin_tensorflow.ipynb",
        title="TensorFlow/Keras",
        module="backends/tf.py",
        imports="import tensorflow as tf\nimport keras",
        render_functions=("_conv_relu", "_render"),
        step_method="_train_graph",
        rendering=_src("""
            The Keras rendering is a `keras.Sequential` of named blocks (`model.get_layer("nin1")`, …). Keras is
            channels-last, so every activation is NHWC: `(1, 54, 54, 96)` where the PyTorch chapter prints
            `(1, 96, 54, 54)`. To compute exactly the function of the other frameworks it uses Keras's
            `padding="same"` only where that is symmetric (stride 1, odd kernel: the chapter's 5x5 and 3x3
            convs), pads explicitly with `ZeroPadding2D` anywhere else ("same" pads bottom/right first when the
            stride is above 1), and flattens in NCHW order. Conv kernels are HWIO in Keras and are transposed to
            the canonical OIHW layout only when weights are exchanged."""),
        block=_src("""
            model = backend.build_model(spec, init=INIT, seed=0)
            # the first NiN block as Keras holds it: an 11x11 conv, then two 1x1 convs, each with ReLU
            model.get_layer("nin1").summary()"""),
        model=_src("""
            model.summary()  # spatial sizes are open (None): the model takes any image size
            print(f"{backend.count_params(model):,} parameters (the spec counts {spec.num_params:,})")"""),
        walk=_src("""
            X = tf.random.uniform((1, 224, 224, 1))  # NHWC
            for layer, info in zip(model.layers, walk):
                X = layer(X, training=False)
                print(f"{layer.name:<8} {type(layer).__name__:<24} output shape: {str(tuple(X.shape)):<17} "
                      f"params {info.params:>9,}  multiply-adds {info.macs:>12,}")
                assert tuple(X.shape) == info.nhwc, (layer.name, tuple(X.shape), info.nhwc)"""),
        step=_src("""
            The training loop is shared by the notebooks (`nin_multi.train.train`: data order, metrics,
            checkpoints, the plot); the TensorFlow part is the backend's `Trainer`, a `tf.GradientTape` step
            traced once with `tf.function`:"""),
    ),
    "mxnet": dict(
        file="nin_mxnet.ipynb",
        title="MXNet Gluon",
        module="backends/mxnet.py",
        imports="import mxnet as mx\nfrom mxnet import autograd",
        render_functions=("_render",),
        step_method="train_step",
        rendering=_src("""
            The Gluon rendering is an `nn.HybridSequential` with one child per spec layer, in order, so
            `model[0]` is the first NiN block; the chapter's Gluon code builds the same thing with `net.add`.
            Tensors are NCHW and Gluon's `Conv2D` takes the ReLU as its `activation`. The model is hybridized
            (compiled to a static graph) as the book does before training."""),
        block=_src("""
            model = backend.build_model(spec, init=INIT, seed=0)
            # the first NiN block as Gluon holds it: an 11x11 conv, then two 1x1 convs, each with ReLU
            model[0]"""),
        model=_src("""
            print(model)
            print(f"{backend.count_params(model):,} parameters (the spec counts {spec.num_params:,})")"""),
        walk=_src("""
            ctx = mx.gpu(0) if mx.context.num_gpus() > 0 else mx.cpu()
            X = mx.nd.random.uniform(shape=(1, 1, 224, 224), ctx=ctx)
            with autograd.predict_mode():  # dropout off, as in evaluation
                for blk, info in zip(model, walk):
                    X = blk(X)
                    print(f"{blk.name:<8} {type(blk).__name__:<18} output shape: {str(tuple(X.shape)):<17} "
                          f"params {info.params:>9,}  multiply-adds {info.macs:>12,}")
                    assert tuple(X.shape) == info.nchw, (blk.name, tuple(X.shape), info.nchw)"""),
        step=_src("""
            The training loop is shared by the notebooks (`nin_multi.train.train`: data order, metrics,
            checkpoints, the plot); the MXNet part is the backend's `Trainer.train_step`, the book's
            `autograd.record()`, `loss.backward()` and `trainer.step(batch_size)`:"""),
    ),
    "jax": dict(
        file="nin_jax.ipynb",
        title="JAX/Flax",
        module="backends/jax.py",
        imports="import jax\nimport jax.numpy as jnp",
        render_functions=("_Block", "NiN"),
        step_method="__init__",
        rendering=_src("""
            The Flax rendering is a `flax.linen` module, `NiN`, that walks the spec's layers in order; a NiN
            block is a `_Block` submodule named after the spec's block (`nin1`, …). Flax is functional: the
            module holds no weights, so the backend's model is a small object holding the module and its
            parameter tree (`model.params["nin1"]["conv0"]["kernel"]`), which the `Trainer` replaces after each
            step. Like Keras it is channels-last (NHWC, kernels HWIO, transposed to the canonical OIHW only when
            weights are exchanged); padding is explicit and symmetric, pooling is `"VALID"` (rounds down, as
            the chapter's PyTorch code), and Flatten goes through NCHW order.

            **Where the book's own JAX tab differs.** The JAX code of the chapter keeps Flax's default
            initialisation (LeCun-normal kernels) where the other tabs use Xavier-uniform, and ends with a
            fixed 5×5 average pooling (`nn.avg_pool(x, (5, 5))`), which is global only for 224×224 inputs
            (the last block's output is 5×5 there; at any other size it leaves more than one value per
            channel). This notebook renders the chapter's network: Xavier-uniform initialisation (drawn by
            `build_model` from the spec's shapes) and a true global average pooling at every input size, so
            the same weights give the same logits as in the other frameworks."""),
        block=_src("""
            model = backend.build_model(spec, init=INIT, seed=0)
            # the first NiN block's parameters as Flax holds them: an 11x11 conv, then two 1x1 convs (HWIO)
            jax.tree_util.tree_map(lambda a: (a.shape, str(a.dtype)), model.params["nin1"])"""),
        model=_src("""
            print(model.module)
            for name, block in model.params.items():
                print(name, {layer: {k: v.shape for k, v in p.items()} for layer, p in block.items()})
            print(f"{backend.count_params(model):,} parameters (the spec counts {spec.num_params:,})")"""),
        walk=_src("""
            X = jax.random.uniform(jax.random.PRNGKey(0), (1, 224, 224, 1))  # NHWC
            outs = model.module.apply({"params": model.params}, X)  # every top-level layer's output, dropout off
            for layer, out, info in zip(spec.layers, outs, walk):
                print(f"{layer.name:<8} {type(layer).__name__:<18} output shape: {str(tuple(out.shape)):<17} "
                      f"params {info.params:>9,}  multiply-adds {info.macs:>12,}")
                assert tuple(out.shape) == info.nhwc, (layer.name, tuple(out.shape), info.nhwc)"""),
        step=_src("""
            The training loop is shared by the notebooks (`nin_multi.train.train`: data order, metrics,
            checkpoints, the plot); the JAX part is the backend's `Trainer`: the loss and its gradient from
            `jax.value_and_grad`, the update from `optax.sgd`, one step compiled by `jax.jit`, and dropout keys
            derived from (seed, step) so a resumed run draws the masks of an uninterrupted one:"""),
    ),
}


# -- the chapter, in order -----------------------------------------------------------------------------
def cells(fw: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """(kind, source, tags) of every cell of one framework's notebook."""
    f = FRAMEWORKS[fw]
    titles = [FRAMEWORKS[o]["title"] for o in FRAMEWORKS if o != fw]
    others = ", ".join(titles[:-1]) + " and " + titles[-1]
    md, code = "markdown", "code"
    return [
        (md, _src(f"""
            # Network in Network (NiN) in {f['title']}

            This notebook follows the chapter *Network in Network (NiN)* of *Dive into Deep Learning*
            (d2l.ai, 8.3) in {f['title']}: the NiN block, the NiN model, the layer-by-layer shape walk on a
            224×224 image, training on Fashion-MNIST with the chapter's settings, the training curves and a
            summary. Two questions the chapter only asks are answered with numbers: how many parameters NiN
            saves against a fully connected head, and whether the same weights give the same logits in
            {others}.

            The network is not typed out here. It is written once, as data, in `nin_multi/spec.py`, and
            `{f['module']}` renders that spec into {f['title']} layers; the cells below show the framework's
            own objects that result.

            **Quick mode.** The chapter's settings (10 epochs on 60,000 images at 224×224) take hours on a CPU.
            With `NIN_NOTEBOOK_QUICK=1` in the environment the notebook trains one epoch on 256 images at
            67×67 (the smallest size the network takes) and runs in well under a minute; the numbers then say
            nothing about NiN's accuracy. `NIN_MULTI_DATA_DIR` names a directory holding the four Fashion-MNIST
            files (unset: they are downloaded once into a checksummed cache)."""), ()),
        (code, _src("""
            # Parameters: which text's recipe to follow, and the quick mode's small settings (NIN_NOTEBOOK_QUICK=1).
            import os
            from pathlib import Path

            # "d2l-1st-edition" (lr 0.1, 10 epochs, batch 128), "d2l-2nd-edition" (lr 0.05) or "d2l-zh-notebook"
            # (lr 0.05, 5 epochs, batch 256); all at 224x224 with Xavier init (nin_multi/recipes.py)
            RECIPE = os.environ.get("NIN_NOTEBOOK_RECIPE", "d2l-1st-edition")
            QUICK = os.environ.get("NIN_NOTEBOOK_QUICK", "0").strip().lower() in ("1", "true", "yes")
            DATA_DIR = os.environ.get("NIN_MULTI_DATA_DIR") or None  # None: download Fashion-MNIST to the cache
            RUNS_DIR = Path(os.environ.get("NIN_NOTEBOOK_RUNS_DIR", "runs"))  # training output goes below it"""),
         (PARAMETERS,)),
        (code, _src("""
            import inspect
            import sys
            import warnings

            try:
                import nin_multi  # noqa: F401
            except ImportError:  # not installed (pip install -e ..): use the checkout this notebook lives in
                sys.path.insert(0, str(Path.cwd().parent))

            import numpy as np
            from IPython.display import Image, display

            from nin_multi import backends
            from nin_multi.config import TrainConfig
            from nin_multi.data import CLASSES, load_fashion_mnist, to_float_batch
            from nin_multi.recipes import get_recipe
            from nin_multi.run import final_line
            from nin_multi.spec import chapter_spec, make_spec
            from nin_multi.train import train
            from nin_multi.weights import load_weights

            # Without ipywidgets tqdm falls back to its text progress bar, after a warning that says so.
            warnings.filterwarnings("ignore", message="IProgress not found")

            recipe = get_recipe(RECIPE).settings
            if recipe["variant"] != "chapter":
                raise ValueError(f"this notebook walks the chapter's network; {RECIPE} builds another one: "
                                 f"nin-multi train --recipe {RECIPE}")
            LR, INIT = recipe["lr"], recipe["init"]
            if QUICK:  # one epoch on 256 images at 67x67, the smallest size the network takes
                EPOCHS, BATCH_SIZE, RESIZE, SUBSET, TEST_SUBSET = 1, 64, 67, 256, 128
            else:
                EPOCHS, BATCH_SIZE, RESIZE = recipe["epochs"], recipe["batch_size"], recipe["resize"]
                SUBSET = TEST_SUBSET = None  # all of Fashion-MNIST
            print(f"{RECIPE}, {'quick' if QUICK else 'full'} mode: {EPOCHS} epoch(s), batch {BATCH_SIZE}, "
                  f"{RESIZE}x{RESIZE}, lr {LR}, {INIT} init, data from {DATA_DIR or 'the download cache'}")

            FRAMEWORK = "__FW__"
            # Every installed framework is imported now, in the order that is safe in one process (PyTorch
            # before TensorFlow: the reverse has hung); the comparison at the end uses the other frameworks.
            print("installed frameworks:", ", ".join(backends.installed()) or "none")
            backends.load_backends(backends.installed())
            backend = backends.get_backend(FRAMEWORK)  # if __FW__ is missing: says which pip command installs it
            backend.configure(threads=None, seed=0)  # every CPU core, seed 0
            __IMPORTS__
            print(f"{backend.NAME} backend: layout {backend.LAYOUT}, computing on {backend.device()}")""")
         .replace("__FW__", fw).replace("__IMPORTS__", f["imports"]), ()),
        (md, _src("""
            ## The NiN block

            A NiN block is one ordinary convolution followed by two 1×1 convolutions, each followed by ReLU.
            A 1×1 convolution is a fully connected layer applied at every pixel on its own: it mixes the
            channels of one position and shares its weights across positions. In the spec a block is plain
            data: its first layer's kernel, stride and padding come from the chapter's table, and the 1×1
            layers keep the channel count."""), ()),
        (code, _src("""
            spec = chapter_spec()  # 1 input channel (Fashion-MNIST is greyscale), 10 classes
            for conv in spec.layers[0].convs:  # the first block
                print(conv)"""), ()),
        (md, f["rendering"] + "\n\n" + _src("""
            This is the backend's code that turns a spec block into framework layers (it is the only place
            the layers are written):"""), ()),
        (code, "\n".join(f"print(inspect.getsource(backend.{name}))" for name in f["render_functions"]), ()),
        (md, "The first block as the framework builds it:", ()),
        (code, f["block"], ()),
        (md, _src("""
            ## The NiN model

            Four NiN blocks with 96, 256, 384 and 10 channels; the first three are each followed by a 3×3
            max-pooling with stride 2, and dropout (0.5) comes before the last block. The last block has one
            channel per class, and global average pooling turns each channel into one logit: the model has
            no fully connected layer at all."""), ()),
        (code, f["model"], ()),
        (md, _src("""
            ## Shapes layer by layer

            As in the chapter, one 224×224 image goes through the model's top-level layers one at a time and
            each output shape is printed. Beside it stand the spec's own predictions for that layer
            (parameters and multiply-adds, computed without any framework); the `assert` checks the
            framework's shape against the spec's."""), ()),
        (code, "walk = spec.walk(224)  # the spec's shapes, parameters and multiply-adds per layer\n" + f["walk"]
         + "\n" + _src("""
            print(f"total: {sum(i.params for i in walk):,} parameters, "
                  f"{sum(i.macs for i in walk):,} multiply-adds per 224x224 image")"""), (SHAPE_WALK,)),
        (md, _src("""
            ## Parameters: NiN against a fully connected head

            The chapter says NiN needs far fewer parameters than AlexNet or VGG because it has no large fully
            connected layers, without counting them. The spec can build the same three convolution blocks
            with a VGG-style head instead of the last NiN block and global average pooling: flatten, a
            4,096-unit hidden layer (with dropout), and a 10-way output. Flattening ties that head to one
            input size (here 224×224); the NiN head takes any size."""), ()),
        (code, _src("""
            fc_spec = make_spec("fc-head", image_size=224)


            def parameter_table(s, size=224):
                print(f"{'layer':<12} {'type':<14} {'output (NCHW)':<18} {'params':>12}")
                for i in s.walk(size):
                    print(f"{i.name:<12} {i.kind:<14} {str(i.nchw):<18} {i.params:>12,}")
                print(f"{'total':<45} {s.num_params:>12,}")


            print("NiN, the chapter's model (global average pooling head):")
            parameter_table(spec)
            print("\\nThe same convolutions with a fully connected head:")
            parameter_table(fc_spec)
            head = sum(i.params for i in fc_spec.walk(224) if i.kind == "Dense")
            print(f"\\nNiN: {spec.num_params:,} parameters; with a fully connected head: {fc_spec.num_params:,} "
                  f"({fc_spec.num_params / spec.num_params:.1f}x), of which the dense layers hold {head:,} "
                  f"({head / fc_spec.num_params:.0%}).")"""), ()),
        (md, _src("""
            ## Training

            The chapter trains with SGD at learning rate 0.1 for 10 epochs, batch size 128, on Fashion-MNIST
            resized to 224×224, with Xavier initialisation (the parameter cell above; quick mode shrinks it).
            With Xavier the loss can stay near ln 10 ≈ 2.30 (chance) for a while before it starts to fall; on
            a small subset, for many epochs.
            Each run writes its metrics, a checkpoint per epoch, the final weights and the curves into its
            run directory, which is replaced when the notebook runs again.""") + "\n\n" + f["step"], ()),
        (code, f"print(inspect.getsource(backend.Trainer.{f['step_method']}))", ()),
        (code, _src("""
            run_dir = RUNS_DIR / f"notebook-{FRAMEWORK}{'-quick' if QUICK else ''}"
            cfg = TrainConfig(backend=FRAMEWORK, epochs=EPOCHS, batch_size=BATCH_SIZE, lr=LR, resize=RESIZE, init=INIT,
                              data_dir=DATA_DIR, subset=SUBSET, test_subset=TEST_SUBSET, out=str(run_dir),
                              progress=not QUICK, recipe=RECIPE)
            run_dir, history = train(cfg, overwrite=True)"""), ()),
        (md, _src("""
            ## Training curves

            Training loss and accuracy and test accuracy per epoch, as the chapter plots them (the run writes
            this figure to `curves.png` after every epoch)."""), ()),
        (code, _src("""
            display(Image(filename=str(run_dir / "curves.png")))
            for row in history:
                print(f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, train acc {row['train_acc']:.3f}, "
                      f"test loss {row['test_loss']:.4f}, test acc {row['test_acc']:.3f}")"""), (CURVES,)),
        (md, _src(f"""
            ## The same weights in every framework

            The trained weights were saved in one framework-neutral layout (`weights.safetensors`: conv kernels OIHW).
            Loaded into {f['title']} and into {others} (each transposing at its own edge), they give the
            same logits on the same test images up to float32 rounding: the renderings compute one function
            (onnxruntime, running the spec's ONNX graph, is one more of them). A framework that is not
            installed is skipped."""), ()),
        (code, _src("""
            _, weights = load_weights(run_dir / "weights.safetensors", spec)  # refuses weights made for another network
            images = load_fashion_mnist(DATA_DIR).test_images[:16]  # the first 16 test images
            backend.set_weights(model, spec, weights)
            ours = backend.forward(model, to_float_batch(images, RESIZE, backend.LAYOUT))
            print(f"{FRAMEWORK}: logits {ours.shape}; predicted classes "
                  f"{', '.join(CLASSES[i] for i in ours.argmax(1)[:4])}, ...")
            for name in backends.ORDER:
                if name == FRAMEWORK:
                    continue
                if not backends.is_installed(name):
                    print(f"{name}: not installed, skipped (pip install 'nin-multi[{name}]')")
                    continue
                other = backends.get_backend(name)
                other_model = other.build_model(spec, seed=1)  # a different random start, overwritten next
                other.set_weights(other_model, spec, weights)
                theirs = other.forward(other_model, to_float_batch(images, RESIZE, other.LAYOUT))
                print(f"{name}: max |logit difference| vs {FRAMEWORK}: {np.abs(theirs - ours).max():.2e} "
                      f"(largest logit {np.abs(ours).max():.2f}); same predictions: "
                      f"{bool((theirs.argmax(1) == ours.argmax(1)).all())}")"""), (PARITY,)),
        (md, _src("""
            ## The exercises in numbers

            The chapter asks what one or three 1×1 convolutions, 3×3 "inner" convolutions or a fully connected
            head would change, and suggests a family of NiN networks after VGG-11/16/19. Each is a spec
            variant; their costs come from the spec alone (no framework, no training): parameters,
            multiply-adds per image, and memory at the chapter's batch of 128 — for prediction (weights and
            the largest live activations) and for training (weights, gradients and every activation kept for
            the backward pass). `nin-multi compare --variants ...` trains variants side by side for the
            accuracy and speed half of the answer."""), ()),
        (code, _src("""
            from nin_multi.exercises import fmt_bytes, resources

            print(f"{'variant':<11} {'weight layers':>13} {'parameters':>12} {'multiply-adds':>15} "
                  f"{'prediction':>11} {'training':>10}")
            for name in ("chapter", "no-1x1", "one-1x1", "three-1x1", "3x3-inner", "fc-head", "nin-11", "nin-16",
                         "nin-19"):
                v = make_spec(name, image_size=224)
                r = resources(v, 224, 128)
                print(f"{name:<11} {len(list(v.param_layers())):>13} {r['total']['params']:>12,} "
                      f"{r['total']['macs_per_image']:>15,} {fmt_bytes(r['prediction']['total_bytes']):>11} "
                      f"{fmt_bytes(r['training']['total_bytes']):>10}")"""), ()),
        (md, _src("""
            ## Summary

            * A NiN block is a convolution followed by 1×1 convolutions: fully connected layers applied at
              each pixel, which add non-linearity across channels without flattening the image.
            * NiN ends with a block that has one channel per class and global average pooling, not with fully
              connected layers: 1,992,166 parameters, where the same convolutions with a 4,096-unit fully
              connected head need about 21 times as many (41,324,042), 95% of them in the first dense layer.
            * The network is one spec; every framework's rendering gives the same shapes (NCHW in PyTorch and
              MXNet, NHWC in Keras and Flax) and, with the same weights, the same logits.
            * The chapter's exercises vary the block: `make_spec("no-1x1")`, `"one-1x1"`, `"three-1x1"`,
              `"3x3-inner"`, `"fc-head"` and the VGG-like `"nin-11"`, `"nin-16"`, `"nin-19"` build those
              variants, and `nin-multi train --variant ...` trains them."""), ()),
        (code, _src("""
            print(f"{'quick mode (not the chapter settings)' if QUICK else 'the chapter settings'}: "
                  f"{EPOCHS} epoch(s) on {cfg.subset or 'all'} training images at {RESIZE}x{RESIZE}")
            print(final_line(history[-1], backend.device()))
            print(f"run directory: {run_dir}")"""), ()),
    ]


def build(fw: str) -> nbformat.NotebookNode:
    nb = new_notebook(metadata={
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    })
    for i, (kind, source, tags) in enumerate(cells(fw)):
        make = new_code_cell if kind == "code" else new_markdown_cell
        cell = make(source, id=f"{fw}-{i:02d}")  # fixed ids: regenerating changes nothing
        if tags:
            cell.metadata["tags"] = list(tags)
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def render(fw: str) -> str:
    """The file's text exactly as ``nbformat.write`` stores it."""
    text = nbformat.writes(build(fw))
    return text if text.endswith("\n") else text + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report notebooks that differ from this script")
    args = parser.parse_args(argv)
    stale = []
    for fw, f in FRAMEWORKS.items():
        path = HERE / f["file"]
        text = render(fw)
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(path.name)
        if not args.check:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if args.check and stale:
        print(f"out of date: {', '.join(stale)}; run python {Path(__file__).name}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
