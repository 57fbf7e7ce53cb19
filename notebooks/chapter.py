"""The chapter, in order, as (kind, source, tags) cells; ``make_notebooks.py`` writes them per framework.

Only public names of nin_multi appear in a cell: what a learner sees is what a learner can use.
"""
from __future__ import annotations

from frameworks import FRAMEWORKS, src

#: Cell tags the tests look for: the parameter cell (papermill's name) and the cells whose output they check.
PARAMETERS, SAME_FUNCTION, SHAPE_WALK, BY_HAND, CURVES, FINAL_LINE, PARITY = (
    "parameters", "same-function", "shape-walk", "sgd-by-hand", "curves", "final-line", "parity")
MD, CODE = "markdown", "code"


def intro(fw: str) -> list[tuple]:
    f = FRAMEWORKS[fw]
    others = [FRAMEWORKS[o]["file"] for o in FRAMEWORKS if o != fw]
    return [
        (MD, src(f"""
            # Network in Network (NiN) in {f['title']}

            The chapter *Network in Network* of [Dive into Deep Learning](https://d2l.ai) (section 8.3), in
            {f['title']}: the NiN block and the NiN model written in {f['title']}'s own layers, the same
            network as the `nin_multi` package renders it from its spec (and a check that the two compute
            the same function), the shape of every layer's output, training on Fashion-MNIST, the curves,
            the final line, and the chapter's exercises, each answered with a number or an experiment.

            **The outputs stored here come from the quick setting** (the parameter cell below,
            `QUICK = True`): a few minutes on a 2-core CPU. It builds, walks and checks the chapter's network
            at 224×224, but trains a narrow NiN (the `mini` variant: the same four NiN blocks with 32, 64
            and 128 channels) for 5 epochs on 3,443 unresized 28×28 images. `QUICK = False` trains the chapter's own
            setting (all 60,000 images at 224×224, 10 epochs): several hours on a CPU.

            The same chapter in the other frameworks: {', '.join(f'`{o}`' for o in others)}, beside this one."""), ()),
        (CODE, src("""
            # Parameters. QUICK = True: the stored run, a few minutes on a 2-core CPU.
            # QUICK = False: the chapter's own setting, RECIPE below, on all of Fashion-MNIST (hours on a CPU).
            QUICK = True
            RECIPE = "d2l-1st-edition"  # lr 0.1, 10 epochs, batch 128, 224x224, Xavier init; or "d2l-2nd-edition"
            # The quick setting: a narrow NiN on the first 3,443 training and 500 test images, unresized (28x28),
            # with He init.
            QUICK_SETTINGS = dict(variant="mini", resize=28, init="kaiming", lr=0.05, batch_size=32, epochs=5,
                                  subset=3443, test_subset=500)
            DATA_DIR = None  # the four Fashion-MNIST files; None: $NIN_MULTI_DATA_DIR, else downloaded once (30 MB)
            RUNS_DIR = "runs"  # every training writes its run directory below this one"""), (PARAMETERS,)),
        (CODE, src("""
            import sys
            import warnings
            from pathlib import Path

            try:
                import nin_multi  # noqa: F401
            except ImportError:  # not installed (pip install -e ..): use the checkout this notebook lives in
                sys.path.insert(0, str(Path.cwd().parent))

            import numpy as np
            from IPython.display import Image, display

            from nin_multi import backends
            from nin_multi.config import TrainConfig
            from nin_multi.data import CLASSES, load_fashion_mnist, to_float_batch
            from nin_multi.exercises import fmt_bytes, format_resources, resources
            from nin_multi.recipes import get_recipe
            from nin_multi.run import final_line
            from nin_multi.spec import chapter_spec, make_spec
            from nin_multi.train import train
            from nin_multi.weights import load_weights

            # tqdm draws text progress bars here; without ipywidgets it warns first that it will.
            warnings.filterwarnings("ignore", message="IProgress not found")

            FRAMEWORK = "__FW__"
            # Every installed framework is loaded now, PyTorch before TensorFlow (the order that is safe in one
            # process): the last section gives the trained weights to each of them.
            backends.load_backends(backends.installed())
            backend = backends.get_backend(FRAMEWORK)  # if it is missing: says which pip command installs it
            backend.configure(threads=None, seed=0)  # every CPU core, seed 0
            __IMPORTS__

            settings = dict(QUICK_SETTINGS) if QUICK else {k: v for k, v in get_recipe(RECIPE).settings.items()
                                                           if k not in ("in_channels", "precision")}
            print(f"{'quick setting' if QUICK else RECIPE}: {settings}")
            print(f"{FRAMEWORK} computes on {backend.device()}; installed: {', '.join(backends.installed())}")""")
         .replace("__FW__", fw).replace("__IMPORTS__", f["imports"]), ()),
    ]


def network(fw: str) -> list[tuple]:
    f = FRAMEWORKS[fw]
    return [
        (MD, src("""
            ## The NiN block

            A NiN block is one ordinary convolution followed by two 1×1 convolutions, each followed by a ReLU.
            A 1×1 convolution is a fully connected layer applied at every pixel on its own: it mixes the
            channels of one position, with the same weights at every position.""") + "\n\n" + f["idiom"], ()),
        (CODE, f["block"], ()),
        (MD, src("""
            The `nin_multi` package writes the network once, as data (`nin_multi.spec`), and renders that data
            in each framework, so that five frameworks provably run one network. Here is the spec's first block
            and the framework object the package builds from it:"""), ()),
        (CODE, src("""
            spec = chapter_spec()  # 1 input channel (Fashion-MNIST is greyscale), 10 classes
            for conv in spec.layers[0].convs:
                print(conv)
            model = backend.build_model(spec, init="kaiming", seed=0)
            """) + "\n" + f["spec_block"], ()),
        (MD, src("""
            ## The NiN model

            Four NiN blocks with 96, 256, 384 and 10 output channels. The first three are each followed by a
            3×3 max-pooling with stride 2; dropout (0.5) comes before the last block. The last block has one
            channel per class, and global average pooling turns each channel into one logit: the model has
            no fully connected layer at all."""), ()),
        (CODE, f["model"], ()),
        (CODE, src("""
            print(f"the spec's rendering: {backend.count_params(model):,} parameters; "
                  f"the spec counts {spec.num_params:,}")"""),
         ()),
        (MD, src("""
            ### The same function

            Both models get the same weights, the ones the package's model was initialised with (He init):
            `backend.get_weights` gives them as framework-neutral arrays (conv kernels OIHW, keyed by layer
            name), and `load_into` copies them into the model typed out above with the framework's own API.
            Then both classify the same 16 test images at 224×224. Equal logits, up to float32 rounding, mean
            the two are one function."""), ()),
        (CODE, f["load"] + "\n\n\n" + src("""
            weights = backend.get_weights(model, spec)
            book = load_into(net, weights)
            images = to_float_batch(load_fashion_mnist(DATA_DIR).test_images[:16], 224, backend.LAYOUT)
            ours, theirs = backend.forward(model, images), logits(book, images)
            print("largest |logit difference|, typed-out model vs the spec's rendering: "
                  f"{np.abs(ours - theirs).max():.1e} "
                  f"(largest logit {np.abs(ours).max():.2f}); same predicted classes: "
                  f"{bool((ours.argmax(1) == theirs.argmax(1)).all())}")"""), (SAME_FUNCTION,)),
        (MD, src("""
            ## Shapes layer by layer

            As in the chapter, one 224×224 image goes through the model's layers one at a time and each output
            shape is printed; the `assert` checks it against the shape the spec's rendering reports."""), ()),
        (CODE, f["walk"], (SHAPE_WALK,)),
    ]


def training(fw: str) -> list[tuple]:
    f = FRAMEWORKS[fw]
    others = [FRAMEWORKS[o]["title"] for o in FRAMEWORKS if o != fw]
    return [
        (MD, src(f"""
            ## Training

            The chapter trains with plain SGD on the cross-entropy loss: for each batch, the loss, its
            gradient with respect to every weight, and the update *w* ← *w* − lr · ∇*w*. Written in
            {f['title']} for the model typed out above: five steps on the same 8 training images at 224×224.
            The learning rate is 0.01, a smaller step than the chapter's 0.1, so that on one repeated batch
            the loss falls step by step:"""), ()),
        (CODE, src("""
            lr = 0.01
            data = load_fashion_mnist(DATA_DIR)
            x = to_float_batch(data.train_images[:8], 224, backend.LAYOUT)
            y = data.train_labels[:8].astype(np.int64)
            """) + "\n" + f["step"], (BY_HAND,)),
        (MD, src("""
            The package's loop, `train`, runs the same step over every batch of every epoch, evaluates on the
            test set after each epoch, and writes the run directory (metrics, a checkpoint per epoch, the weights
            and `curves.png`)."""), ()),
        (CODE, src("""
            cfg = TrainConfig(backend=FRAMEWORK, **settings, data_dir=DATA_DIR, progress=False,
                              out=f"{RUNS_DIR}/{FRAMEWORK}-{'quick' if QUICK else RECIPE}")
            run_dir, history = train(cfg, overwrite=True)"""), ()),
        (MD, "## Training curves", ()),
        (CODE, src("""
            display(Image(filename=str(run_dir / "curves.png")))"""), (CURVES,)),
        (MD, "## The final line\n\nWhat the chapter prints at the end of training:", ()),
        (CODE, "print(final_line(history[-1], backend.device()))", (FINAL_LINE,)),
        (MD, src(f"""
            ## The same weights in every framework

            The trained weights are saved framework-neutral (`weights.safetensors`). Loaded into {', '.join(others)}
            (each transposing kernels at its own edge) and into onnxruntime, they give the same logits on the
            same test images up to float32 rounding. A framework that is not installed is skipped."""), ()),
        (CODE, src("""
            trained_spec, trained = load_weights(run_dir / "weights.safetensors")  # the spec is stored in it
            images = load_fashion_mnist(DATA_DIR).test_images[:16]
            trained_model = backend.build_model(trained_spec)
            backend.set_weights(trained_model, trained_spec, trained)
            ours = backend.forward(trained_model, to_float_batch(images, cfg.resize, backend.LAYOUT))
            print(f"{FRAMEWORK}: first predictions {', '.join(CLASSES[i] for i in ours.argmax(1)[:4])}, ...")
            for name in backends.ORDER:
                if name == FRAMEWORK:
                    continue
                if not backends.is_installed(name):
                    print(f"{name}: not installed, skipped (pip install 'nin-multi[{name}]')")
                    continue
                other = backends.get_backend(name)
                other_model = other.build_model(trained_spec, seed=1)  # another random start, overwritten next
                other.set_weights(other_model, trained_spec, trained)
                theirs = other.forward(other_model, to_float_batch(images, cfg.resize, other.LAYOUT))
                print(f"{name}: largest |logit difference| vs {FRAMEWORK}: {np.abs(theirs - ours).max():.1e}; "
                      f"same predictions: {bool((theirs.argmax(1) == ours.argmax(1)).all())}")"""), (PARITY,)),
    ]


def exercises() -> list[tuple]:
    return [
        (MD, src("""
            ## Exercises

            The chapter ends with six exercises, here in our words, each followed by the number or the
            experiment that answers it. Most answers are costs, computed from the spec alone (no framework, no
            training): parameters, multiply-adds per 224×224 image, and memory at the chapter's batch of 128,
            for prediction (weights and the largest layer's input and output) and for training (weights,
            gradients and every activation the backward pass keeps). `nin-multi compare --variants ...` trains
            variants side by side for the accuracy half of an answer (at 224×224: hours on a CPU)."""), ()),
        (CODE, src("""
            def cost_table(names, size=224, batch=128):
                print(f"{'variant':<11} {'weight layers':>13} {'parameters':>12} {'multiply-adds':>15} "
                      f"{'prediction':>11} {'training':>10}")
                for name in names:
                    v = make_spec(name, image_size=size)
                    r = resources(v, size, batch)
                    print(f"{name:<11} {len(list(v.param_layers())):>13} {r['total']['params']:>12,} "
                          f"{r['total']['macs_per_image']:>15,} {fmt_bytes(r['prediction']['total_bytes']):>11} "
                          f"{fmt_bytes(r['training']['total_bytes']):>10}")"""), ()),
        (MD, src("""
            **1. Each NiN block has two 1×1 convolutions. What changes with three, with one, or with none?**
            Each 1×1 convolution adds a layer of per-pixel non-linearity across channels. It costs little
            next to the block's first convolution, except in the wide later blocks; with none left, a block
            is a plain convolution and the network a small all-convolutional one."""), ()),
        (CODE, 'cost_table(["chapter", "three-1x1", "one-1x1", "no-1x1"])', ()),
        (MD, src("""
            **2. What if the 1×1 convolutions were 3×3 instead?** Each then also looks at its neighbours, so
            the receptive field grows, and its weights grow ninefold:"""), ()),
        (CODE, 'cost_table(["chapter", "3x3-inner"])', ()),
        (MD, src("""
            **3. What if a fully connected layer replaced global average pooling?** Flatten the last
            convolutions' 384×5×5 output into a 4,096-unit hidden layer and a 10-way output, as AlexNet and
            VGG end. The head ties the model to one input size (here 224×224), and it holds most of the
            parameters:"""), ()),
        (CODE, src("""
            cost_table(["chapter", "fc-head"])
            fc = make_spec("fc-head", image_size=224)
            head = sum(i.params for i in fc.walk(224) if i.kind == "Dense")
            print(f"\\nthe fully connected head holds {head:,} of {fc.num_params:,} parameters "
                  f"({head / fc.num_params:.0%}); "
                  f"{fc.num_params / spec.num_params:.1f}x the chapter's model")"""), ()),
        (MD, src("""
            **4. How many resources does NiN use?** Its parameters, its computation, and its memory when it
            trains and when it predicts, layer by layer, at 224×224 and batch 128 (what
            `nin-multi resources` prints):"""), ()),
        (CODE, "print(format_resources(resources(spec, 224, 128)))", ()),
        (MD, src("""
            **5. What can go wrong when the last block reduces 384×5×5 to 10×5×5 in one step?** One 3×3
            convolution has to squeeze 384 channels into one per class: a 38-fold narrowing with few
            weights, a bottleneck that can lose what the earlier blocks found (and with the 1×1 layers after
            it also at 10 channels, the block cannot widen again)."""), ()),
        (CODE, src("""
            layers = {i.name: i for i in spec.walk(224)}
            before, after, last = layers["dropout"], layers["nin4"], spec.layers[-3].convs[0]
            print(f"into the last block: {before.nchw[1:]} = {np.prod(before.nchw[1:]):,} values; "
                  f"out of it: {after.nchw[1:]} = {np.prod(after.nchw[1:]):,} values")
            print(f"its first convolution: {last.in_channels} -> {last.out_channels} channels, "
                  f"{last.params:,} parameters, "
                  f"{last.params / spec.num_params:.1%} of the model's")"""), ()),
        (MD, src("""
            **6. Design a family of NiN networks the way VGG-11, VGG-16 and VGG-19 are built.** VGG stacks 3×3
            convolutions in five stages of growing width (64 to 512), each ending in a max-pool. By analogy,
            each stage of *d* convolutions becomes a NiN block of one 3×3 and *d* − 1 1×1 convolutions, and
            VGG's three dense layers become the classes block: `nin-11`, `nin-16` and `nin-19`, with 11, 16
            and 19 weight layers:"""), ()),
        (CODE, 'cost_table(["chapter", "nin-11", "nin-16", "nin-19"])', ()),
        (MD, src("""
            **From the first edition: tune the hyperparameters.** The chapter's initialisation (Xavier) and
            learning rate (0.1) can leave the loss at ln 10 ≈ 2.30, chance level, for many epochs. Here the
            training above is repeated with the chapter's two values instead of He init and 0.05:"""), ()),
        (CODE, src("""
            runs = {f"{cfg.init} init, lr {cfg.lr}": history}
            chapter_cfg = TrainConfig(**{**cfg.to_dict(), "init": "xavier", "lr": 0.1, "out": f"{cfg.out}-xavier"})
            runs["xavier init, lr 0.1"] = train(chapter_cfg, overwrite=True, log=lambda *_: None)[1]
            for label, h in runs.items():
                losses = " ".join(f"{r['train_loss']:.3f}" for r in h)
                print(f"{label:<22} train loss per epoch: {losses}; test acc {h[-1]['test_acc']:.3f}")"""), ()),
    ]


def summary() -> list[tuple]:
    return [(MD, src("""
        ## Summary

        * A NiN block is a convolution followed by 1×1 convolutions: fully connected layers applied at each
          pixel, which add non-linearity across channels without flattening the image.
        * NiN ends with a block that has one channel per class and global average pooling instead of fully
          connected layers: 1,992,166 parameters, where the same convolutions with a 4,096-unit fully
          connected head need about 21 times as many.
        * The model typed out in the framework's own layers and the package's rendering of the spec are the
          same function; so are the renderings in the other frameworks."""), ())]


def cells(fw: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """(kind, source, tags) of every cell of one framework's notebook."""
    return intro(fw) + network(fw) + training(fw) + exercises() + summary()
