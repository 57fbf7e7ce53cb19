"""The chapter, in order, as (kind, source, tags) cells; ``make_notebooks.py`` writes them per framework.

Only public names of nin_multi appear in a cell: what a learner sees is what a learner can use.
"""
from __future__ import annotations

from frameworks import FRAMEWORKS, src

#: Cell tags the tests look for: the parameter cell (papermill's name) and the cells whose output they check.
PARAMETERS, SAME_FUNCTION, SHAPE_WALK, BY_HAND, CURVES, FINAL_LINE, PARITY = (
    "parameters", "same-function", "shape-walk", "sgd-by-hand", "curves", "final-line", "parity")
INITIAL_FILE, LOADED, TRAINING, STORED = "initial-weights", "loaded", "training", "stored-results"
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
            `QUICK = True`): minutes on a 2-core CPU. It builds, walks and checks the chapter's network at
            224×224, then trains that same network with the `fast` recipe (67×67 images, He initialisation,
            SGD with Nesterov momentum, weight decay, label smoothing and a one-cycle learning rate), its
            schedule shortened to 5 epochs, in float32, on the first 3,443 training and 500 test images. All
            four notebooks start that training from one file of initial weights, so their curves differ only
            by what truly differs between the frameworks. `QUICK = False` trains the chapter's own setting
            (all 60,000 images at 224×224, 10 epochs): several hours on a CPU.

            The same chapter in the other frameworks: {', '.join(f'`{o}`' for o in others)}, beside this one."""), ()),
        (CODE, src("""
            # Parameters. QUICK = True: the stored run, minutes on a 2-core CPU.
            # QUICK = False: the chapter's own setting, RECIPE below, on all of Fashion-MNIST (hours on a CPU).
            QUICK = True
            RECIPE = "d2l-2nd-edition"  # d2l.ai today: lr 0.05, 10 epochs, batch 128, 224x224, Xavier init
            # The quick setting: the chapter's network with the fast recipe (67x67, He init with the classifier's
            # 1x1 convs as the identity, Nesterov momentum, weight decay, label smoothing, a one-cycle learning
            # rate), its schedule spanning 5 epochs, in fp32, on the first 3,443 training and 500 test images.
            QUICK_SETTINGS = dict(recipe="fast", epochs=5, precision="fp32", subset=3443, test_subset=500)
            DATA_DIR = None  # the four Fashion-MNIST files; None: $NIN_MULTI_DATA_DIR, else downloaded once (30 MB)
            RUNS_DIR = "runs"  # every training writes its run directory below this one"""), (PARAMETERS,)),
        (CODE, src("""
            import hashlib
            import sys
            import warnings
            from pathlib import Path

            try:
                import nin_multi  # noqa: F401
            except ImportError:  # not installed (pip install -e ..): use the checkout this notebook lives in
                sys.path.insert(0, str(Path.cwd().parent))

            import numpy as np
            import safetensors.numpy
            from IPython.display import Image, display
            from tqdm.std import tqdm  # a text progress bar: stored with the notebook, it shows wherever it is read

            from nin_multi import backends
            from nin_multi.config import TrainConfig
            from nin_multi.data import CLASSES, load_fashion_mnist, num_batches, to_float_batch
            from nin_multi.exercises import fmt_bytes, format_resources, resources
            from nin_multi.recipes import get_recipe
            from nin_multi.run import Run, final_line
            from nin_multi.spec import chapter_spec, make_spec
            from nin_multi.train import build, evaluate, spec_for, train_epoch
            from nin_multi.weights import initial_weights, load_weights, save_weights, trained_entry

            # Without ipywidgets, tqdm.auto (which the package imports) warns that it draws text bars: as here.
            warnings.filterwarnings("ignore", message="IProgress not found")

            FRAMEWORK = "__FW__"
            # Every installed framework is loaded now, PyTorch before TensorFlow (the order that is safe in one
            # process): the last section gives the trained weights to each of them.
            backends.load_backends(backends.installed())
            backend = backends.get_backend(FRAMEWORK)  # if it is missing: says which pip command installs it
            backend.configure(threads=None, seed=0)  # every CPU core, seed 0
            __IMPORTS__

            # A recipe fills in what the settings do not say, as `nin-multi train --recipe` does.
            if QUICK:
                settings = {**get_recipe(QUICK_SETTINGS["recipe"]).settings, **QUICK_SETTINGS}
            else:
                settings = {**get_recipe(RECIPE).settings, "recipe": RECIPE, "precision": "fp32"}
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
            ### One start for all four frameworks

            Every framework draws initial weights with its own random numbers, so four trainings of "the
            same" network would start from four different points and end apart. Here they start from one
            file: the setting's initialisation drawn once in NumPy from the seed
            (`nin_multi.weights.initial_weights`), written as a safetensors file by whichever of the four
            notebooks gets here first (the same seed gives the same bytes). Its SHA-256,
            printed below, is the same in all four notebooks."""), ()),
        (CODE, src("""
            cfg = TrainConfig(backend=FRAMEWORK, **settings, data_dir=DATA_DIR, progress=False,
                              out=f"{RUNS_DIR}/{FRAMEWORK}-{'quick' if QUICK else RECIPE}")
            train_spec = spec_for(cfg)  # the network this setting trains, checked against its image size
            INITIAL = Path(RUNS_DIR) / f"initial-{train_spec.variant}-{cfg.init}-seed{cfg.seed}.safetensors"
            if not INITIAL.exists():  # the first notebook to get here writes it; the others read it
                INITIAL.parent.mkdir(parents=True, exist_ok=True)
                safetensors.numpy.save_file(initial_weights(train_spec, cfg.init, cfg.seed), INITIAL)
            print(f"initial weights ({cfg.init} init, seed {cfg.seed}): {INITIAL}, "
                  f"sha256 {hashlib.sha256(INITIAL.read_bytes()).hexdigest()}")"""), (INITIAL_FILE,)),
        (MD, src(f"""
            {f['title']} loads the file with its own API into the model the package trains (built first
            from another random draw, which the file's weights replace); the model then holds exactly the
            file's numbers:"""), ()),
        (CODE, src("""
            model = backend.build_model(train_spec, seed=cfg.seed + 1)  # any start: the file replaces it
            """) + "\n" + f["start"] + "\n\n" + src("""
            held = backend.get_weights(model, train_spec)
            print(f"{FRAMEWORK}'s model holds the file's weights exactly: "
                  f"{all(np.array_equal(held[k], a) for k, a in safetensors.numpy.load_file(INITIAL).items())}")"""),
         (LOADED,)),
        (MD, src("""
            The training loop is the package's: for every epoch, `train_epoch` runs the framework's training
            step (forward, loss, gradients, update) over the shuffled batches and `evaluate` scores the test
            images; the optimizer and its learning-rate schedule come from the settings (`build`). The run
            directory keeps the metrics, `curves.png` and the trained weights. The bar shows the steps."""), ()),
        (CODE, src("""
            ds = load_fashion_mnist(DATA_DIR).subset(cfg.subset, cfg.test_subset)
            _, make_trainer = build(backend, train_spec, cfg, len(ds.train_images))  # optimizer and schedule
            trainer = make_trainer(model)
            run = Run(cfg.out, f"{train_spec.variant} NiN on {FRAMEWORK}", overwrite=True)
            run.write_config(cfg.to_dict())  # config.json: the settings, and the mark of a run directory
            steps = cfg.epochs * num_batches(len(ds.train_images), cfg.batch_size)
            print(f"{train_spec.variant} NiN ({train_spec.num_params:,} parameters) on {FRAMEWORK}: "
                  f"{len(ds.train_images)} training images at {cfg.resize}x{cfg.resize}, {cfg.epochs} epochs, "
                  f"{cfg.precision}; run directory {run.path}")
            with tqdm(total=steps, desc=FRAMEWORK, unit="step", file=sys.stdout) as bar:
                for epoch in range(cfg.epochs):
                    row = {"epoch": epoch + 1,
                           **train_epoch(trainer, ds, cfg, backend.LAYOUT, epoch, log_step=lambda *_: bar.update())}
                    row["test_loss"], row["test_acc"] = evaluate(trainer, ds.test_images, ds.test_labels, cfg,
                                                                 backend.LAYOUT)
                    run.log_epoch(row)  # metrics.csv, metrics.jsonl and curves.png
                    bar.write(f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, "
                              f"train acc {row['train_acc']:.3f}, test loss {row['test_loss']:.4f}, "
                              f"test acc {row['test_acc']:.3f}, {row['examples_per_sec']:.1f} examples/sec")
                    bar.set_postfix(test_acc=f"{row['test_acc']:.3f}")
            run.close()
            save_weights(run.path / "weights.safetensors", train_spec, backend.get_weights(model, train_spec),
                         trained=trained_entry(cfg.resize, backend.LAYOUT, cfg.precision))
            run_dir, history = run.path, run.history"""), (TRAINING,)),
        (MD, src("""
            ### What differs between the four notebooks

            The four trainings start from the same bytes, see the same images in the same order (the order
            is drawn in NumPy from the seed) and take the same learning rate at every step. What still
            differs is what truly differs between the frameworks: each draws its own **dropout masks**, each
            rounds float32 sums in its own order, and each picks its own **convolution algorithms** (PyTorch
            and MXNet call oneDNN, TensorFlow its own kernels or oneDNN's, JAX those XLA compiles). Those differences
            are tiny at the first step and grow over the training, so the four curves run close together
            without being equal; their final test accuracies differ by a few hundredths at most. The
            documentation's notebooks page draws the four stored runs on one picture."""), ()),
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
            gradients and every activation the backward pass keeps). The other half, what each variant learns,
            and the hyperparameter exercise are answered by experiments: heavy runs made once by a command and
            stored with the documentation, shown here with that command."""), ()),
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
            **Exercises 1 to 3 by experiment.** Costs are half an answer; the other half is what each variant
            learns. Each variant trained with the `fast` recipe over several seeds: the mean test accuracy and
            its standard deviation, the seconds of training, and the parameters. They are heavy runs, made
            once by the command at the head of the table and stored with the documentation:"""), ()),
        (CODE, src("""
            def show_stored(name):
                \"\"\"A table or picture that an experiment stored in docs/img, with the command that remakes it.\"\"\"
                path = Path.cwd().parent / "docs" / "img" / name  # this notebook runs in notebooks/
                if not path.exists():
                    print(f"docs/img/{name} is not in this checkout; python -m nin_multi study --help "
                          f"says which command makes it")
                elif path.suffix == ".png":
                    display(Image(filename=str(path)))
                else:
                    print(path.read_text(encoding="utf-8"))


            show_stored("exercises-seeds.txt")"""), (STORED,)),
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
            learning rate (0.1) can leave the loss at ln 10 ≈ 2.30, chance level, for good: the last block's
            ten class channels are ReLU outputs, and a channel that outputs 0 for every image gives its class
            a constant score and no gradient, so nothing revives it. When all ten die, every logit is 0 and
            the loss is exactly ln 10. The collapse study trains the chapter's plain SGD over several seeds at
            learning rates 0.1 and 0.05 (d2l.ai moved from the first to the second in 2022 for this reason)
            from each initialisation, counts the runs stuck at ln 10, and names the layer whose channels died;
            some cases are trained again in every framework in float64, where the four follow one trajectory
            and get stuck in the same runs. Its table and
            picture, headed by the command that remakes them (it trains a few dozen runs: the better part of
            an hour on a 2-core CPU):"""), ()),
        (CODE, 'show_stored("collapse.txt")\nshow_stored("collapse.png")', (STORED,)),
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
          same function; so are the renderings in the other frameworks.
        * Trained from one file of initial weights, on the same images in the same order, the four frameworks
          end close together; what still differs between them is dropout masks, rounding and convolution
          algorithms."""), ())]


def cells(fw: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """(kind, source, tags) of every cell of one framework's notebook."""
    return intro(fw) + network(fw) + training(fw) + exercises() + summary()
