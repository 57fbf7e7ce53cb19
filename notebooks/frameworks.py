"""What differs between the four notebooks: the chapter's network typed out in each framework's own idiom.

``make_notebooks.py`` puts these pieces into one chapter. Each framework gets the NiN block and the NiN
model written directly in its own layers, as a reader of the chapter would write them; a function that
copies canonical weights (OIHW kernels, in the spec's order) into that model through the framework's own
API; its logits; the book's shape walk over its layers; and ``start``, which loads the one initial weights
file the four trainings share into the package's model with the framework's own safetensors loader, so a
reader sees each framework take the same bytes. Everything else the notebooks share.
"""
from __future__ import annotations

import textwrap


def src(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


TORCH = dict(
    file="nin_pytorch.ipynb",
    title="PyTorch",
    imports="import torch\nfrom torch import nn",
    idiom=src("""
        In PyTorch a block is an `nn.Sequential` of `nn.Conv2d` and `nn.ReLU` modules. Tensors are NCHW
        (batch, channels, height, width), as in the chapter."""),
    block=src("""
        def nin_block(in_channels, out_channels, kernel_size, stride, padding):
            \"\"\"One ordinary convolution, then two 1x1 convolutions; a ReLU after each.\"\"\"
            return nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding), nn.ReLU(),
                nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU(),
                nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU(),
            )


        print(nin_block(1, 96, kernel_size=11, stride=4, padding=0))"""),
    model=src("""
        net = nn.Sequential(
            nin_block(1, 96, kernel_size=11, stride=4, padding=0), nn.MaxPool2d(3, stride=2),
            nin_block(96, 256, kernel_size=5, stride=1, padding=2), nn.MaxPool2d(3, stride=2),
            nin_block(256, 384, kernel_size=3, stride=1, padding=1), nn.MaxPool2d(3, stride=2),
            nn.Dropout(0.5),
            nin_block(384, 10, kernel_size=3, stride=1, padding=1),  # one channel per class
            nn.AdaptiveAvgPool2d(1),  # global average pooling: one number per channel
            nn.Flatten(),  # (batch, 10): the logits
        )
        print(net)
        print(f"{sum(p.numel() for p in net.parameters()):,} parameters")"""),
    spec_block="model.nin1  # the first block of the spec's rendering: the same three convolutions",
    load=src("""
        def load_into(net, weights):
            \"\"\"The canonical arrays, in the spec's order, are the net's state_dict in its own order.\"\"\"
            keys = list(net.state_dict())  # '0.0.weight', '0.0.bias', '0.2.weight', ...
            net.load_state_dict({k: torch.from_numpy(w) for k, w in zip(keys, weights.values(), strict=True)})
            return net


        def logits(net, x):
            net.eval()  # dropout off
            with torch.no_grad():
                return net(torch.from_numpy(x)).numpy()"""),
    walk=src("""
        X = torch.rand(1, 1, 224, 224)
        net.eval()
        for layer, (name, shape) in zip(net, backend.layer_shapes(model, spec, 224), strict=True):
            X = layer(X)
            print(f"{type(layer).__name__:<18} output shape: {tuple(X.shape)}")
            assert tuple(X.shape) == shape, (name, tuple(X.shape), shape)"""),
    step=src("""
        loss_fn, optimizer = nn.CrossEntropyLoss(), torch.optim.SGD(net.parameters(), lr=lr)
        net.train()  # dropout on
        for step in range(5):
            loss = loss_fn(net(torch.from_numpy(x)), torch.from_numpy(y))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            print(f"step {step + 1}: loss {loss.item():.4f}")"""),
    start=src("""
        from safetensors.torch import load_file

        # The file's names (nin1.conv0.weight, ...) are the rendering's state_dict keys, its kernels OIHW as PyTorch's.
        model.load_state_dict(load_file(INITIAL))"""),
)

KERAS = dict(
    file="nin_tensorflow.ipynb",
    title="TensorFlow/Keras",
    imports="import tensorflow as tf\nimport keras\nfrom keras import layers",
    idiom=src("""
        In Keras a block is a `keras.Sequential` of `Conv2D` layers that take the ReLU as their `activation`.
        Keras is channels-last: tensors are NHWC, so where the PyTorch chapter prints `(1, 96, 54, 54)` Keras
        prints `(1, 54, 54, 96)`, and kernels are stored HWIO. `padding="same"` keeps the size at stride 1,
        which is the chapter's padding of 2 for the 5x5 and 1 for the 3x3 convolutions."""),
    block=src("""
        def nin_block(filters, kernel_size, strides, padding):
            \"\"\"One ordinary convolution, then two 1x1 convolutions; a ReLU after each.\"\"\"
            return keras.Sequential([
                layers.Conv2D(filters, kernel_size, strides=strides, padding=padding, activation="relu"),
                layers.Conv2D(filters, 1, activation="relu"),
                layers.Conv2D(filters, 1, activation="relu"),
            ])


        block = nin_block(96, kernel_size=11, strides=4, padding="valid")
        block.build((None, 224, 224, 1))
        block.summary()"""),
    model=src("""
        net = keras.Sequential([
            keras.Input(shape=(224, 224, 1)),
            nin_block(96, kernel_size=11, strides=4, padding="valid"), layers.MaxPool2D(3, strides=2),
            nin_block(256, kernel_size=5, strides=1, padding="same"), layers.MaxPool2D(3, strides=2),
            nin_block(384, kernel_size=3, strides=1, padding="same"), layers.MaxPool2D(3, strides=2),
            layers.Dropout(0.5),
            nin_block(10, kernel_size=3, strides=1, padding="same"),  # one channel per class
            layers.GlobalAveragePooling2D(keepdims=True),  # one number per channel
            layers.Flatten(),  # (batch, 10): the logits
        ])
        net.summary()"""),
    spec_block="model.get_layer(\"nin1\").summary()  # the first block of the spec's rendering",
    load=src("""
        def load_into(net, weights):
            \"\"\"Each conv gets its (kernel, bias) pair with set_weights; Keras kernels are HWIO, ours OIHW.\"\"\"
            convs = [layer for block in net.layers if isinstance(block, keras.Sequential) for layer in block.layers]
            arrays = list(weights.values())
            for conv, kernel, bias in zip(convs, arrays[0::2], arrays[1::2], strict=True):
                conv.set_weights([kernel.transpose(2, 3, 1, 0), bias])
            return net


        def logits(net, x):
            return net(x, training=False).numpy()  # dropout off"""),
    walk=src("""
        X = tf.random.uniform((1, 224, 224, 1))  # NHWC
        for layer, (name, shape) in zip(net.layers, backend.layer_shapes(model, spec, 224), strict=True):
            X = layer(X, training=False)
            print(f"{type(layer).__name__:<22} output shape: {tuple(X.shape)}")
            assert tuple(X.shape) == shape, (name, tuple(X.shape), shape)"""),
    step=src("""
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        optimizer = keras.optimizers.SGD(learning_rate=lr)
        for step in range(5):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, net(x, training=True))  # dropout on
            grads = tape.gradient(loss, net.trainable_variables)
            optimizer.apply_gradients(zip(grads, net.trainable_variables))
            print(f"step {step + 1}: loss {float(loss):.4f}")"""),
    start=src("""
        from safetensors.tensorflow import load_file

        initial = load_file(INITIAL)  # TensorFlow tensors, kernels OIHW
        for key in initial:
            block, conv, kind = key.split(".")  # nin1.conv0.weight: layer conv0 of the Sequential nin1
            if kind == "weight":  # Keras kernels are HWIO
                model.get_layer(block).get_layer(conv).set_weights(
                    [tf.transpose(initial[key], (2, 3, 1, 0)), initial[f"{block}.{conv}.bias"]])"""),
)

GLUON = dict(
    file="nin_mxnet.ipynb",
    title="MXNet Gluon",
    imports="import mxnet as mx\nfrom mxnet import autograd, gluon, nd\nfrom mxnet.gluon import nn",
    idiom=src("""
        In Gluon a block is an `nn.HybridSequential` to which `Conv2D` layers are added; each takes the ReLU as
        its `activation`. Tensors are NCHW. Gluon infers each layer's input channels at the first call, so
        the model is initialised and then run once."""),
    block=src("""
        def nin_block(channels, kernel_size, strides, padding):
            \"\"\"One ordinary convolution, then two 1x1 convolutions; a ReLU after each.\"\"\"
            block = nn.HybridSequential()
            block.add(nn.Conv2D(channels, kernel_size, strides, padding, activation="relu"),
                      nn.Conv2D(channels, kernel_size=1, activation="relu"),
                      nn.Conv2D(channels, kernel_size=1, activation="relu"))
            return block


        print(nin_block(96, kernel_size=11, strides=4, padding=0))"""),
    model=src("""
        net = nn.HybridSequential()
        net.add(nin_block(96, kernel_size=11, strides=4, padding=0), nn.MaxPool2D(3, strides=2),
                nin_block(256, kernel_size=5, strides=1, padding=2), nn.MaxPool2D(3, strides=2),
                nin_block(384, kernel_size=3, strides=1, padding=1), nn.MaxPool2D(3, strides=2),
                nn.Dropout(0.5),
                nin_block(10, kernel_size=3, strides=1, padding=1),  # one channel per class
                nn.GlobalAvgPool2D(),  # one number per channel
                nn.Flatten())  # (batch, 10): the logits
        net.initialize(mx.init.Xavier())
        net(nd.zeros((1, 1, 224, 224)))  # the first call fixes every layer's input channels
        print(net)
        print(f"{sum(p.data().size for p in net.collect_params().values()):,} parameters")"""),
    spec_block="model[0]  # the first block of the spec's rendering: the same three convolutions",
    load=src("""
        def load_into(net, weights):
            \"\"\"collect_params() lists each conv's weight then bias, in the spec's order.\"\"\"
            for param, array in zip(net.collect_params().values(), weights.values(), strict=True):
                assert param.shape == array.shape, (param.name, param.shape, array.shape)
                param.set_data(nd.array(array))
            return net


        def logits(net, x):
            return net(nd.array(x)).asnumpy()  # outside autograd.record(): dropout off"""),
    walk=src("""
        X = nd.random.uniform(shape=(1, 1, 224, 224))
        with autograd.predict_mode():  # dropout off
            for layer, (name, shape) in zip(net, backend.layer_shapes(model, spec, 224), strict=True):
                X = layer(X)
                print(f"{type(layer).__name__:<18} output shape: {X.shape}")
                assert X.shape == shape, (name, X.shape, shape)"""),
    step=src("""
        loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
        trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": lr})
        X, Y = nd.array(x), nd.array(y)
        for step in range(5):
            with autograd.record():  # dropout on while recording
                loss = loss_fn(net(X), Y)
            loss.backward()
            trainer.step(len(y))  # the gradient of the summed loss, divided by the batch size
            print(f"step {step + 1}: loss {loss.mean().asscalar():.4f}")"""),
    start=src("""
        from safetensors.numpy import load_file

        params = model.collect_params()  # nin1_conv0_weight, ...: the file's names with "_" for "."
        for key, array in load_file(INITIAL).items():  # kernels OIHW, as Gluon's
            params[key.replace(".", "_")].set_data(nd.array(array))"""),
)

FLAX = dict(
    file="nin_jax.ipynb",
    title="JAX/Flax",
    imports=src("""
        from functools import partial

        import flax.linen as nn
        import jax
        import jax.numpy as jnp
        import optax"""),
    idiom=src("""
        In Flax a block is a `flax.linen` module; `@nn.compact` lets its `__call__` create the `nn.Conv`
        layers it uses. Flax is functional: a module holds no weights, `init` returns them as a tree that
        every call takes. Like Keras it is channels-last (NHWC, kernels HWIO). Padding is written out
        symmetric, as in the chapter.

        The book's own JAX tab differs in two details: it keeps Flax's default initialisation (LeCun-normal)
        and ends with a fixed 5×5 average pool, which is global only for 224×224 inputs. This notebook
        writes the chapter's global average pooling, so the network is the same function at every size."""),
    block=src("""
        class NiNBlock(nn.Module):
            \"\"\"One ordinary convolution, then two 1x1 convolutions; a ReLU after each.\"\"\"
            features: int
            kernel_size: int
            strides: int
            padding: int

            @nn.compact
            def __call__(self, x):
                k, p = self.kernel_size, self.padding
                x = nn.relu(nn.Conv(self.features, (k, k), self.strides, padding=((p, p), (p, p)), name="conv0")(x))
                x = nn.relu(nn.Conv(self.features, (1, 1), name="conv1")(x))
                return nn.relu(nn.Conv(self.features, (1, 1), name="conv2")(x))


        block = NiNBlock(96, kernel_size=11, strides=4, padding=0)
        print(block.tabulate(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 1)), depth=1))"""),
    model=src("""
        def max_pool(x):
            return nn.max_pool(x, (3, 3), strides=(2, 2))  # "VALID": rounds down, as the chapter


        class NiN(nn.Module):
            num_classes: int = 10

            def setup(self):
                self.nin1 = NiNBlock(96, kernel_size=11, strides=4, padding=0)
                self.nin2 = NiNBlock(256, kernel_size=5, strides=1, padding=2)
                self.nin3 = NiNBlock(384, kernel_size=3, strides=1, padding=1)
                self.dropout = nn.Dropout(0.5)
                self.nin4 = NiNBlock(self.num_classes, kernel_size=3, strides=1, padding=1)  # one channel per class

            def layers(self, training=False):
                \"\"\"The chapter's layers in order, each a function of the previous one's output.\"\"\"
                return [self.nin1, max_pool, self.nin2, max_pool, self.nin3, max_pool,
                        partial(self.dropout, deterministic=not training), self.nin4,
                        lambda x: x.mean(axis=(1, 2), keepdims=True),  # global average pooling
                        lambda x: x.reshape(x.shape[0], -1)]  # (batch, 10): the logits

            def __call__(self, x, training=False):
                for layer in self.layers(training):
                    x = layer(x)
                return x


        net = NiN()
        variables = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 1)))
        print(jax.tree_util.tree_map(jnp.shape, variables["params"]["nin1"]))
        print(f"{sum(a.size for a in jax.tree_util.tree_leaves(variables)):,} parameters")"""),
    spec_block=src("""
        # the spec's rendering holds its parameter tree beside the module: the same three convolutions
        jax.tree_util.tree_map(jnp.shape, model.params["nin1"])"""),
    load=src("""
        def load_into(net, weights):
            \"\"\"The canonical names (nin1.conv0.weight, ...) are paths in the parameter tree; kernels
            become HWIO. Flax keeps weights outside the module: the result is the module bound to them.\"\"\"
            params = {}
            for key, array in weights.items():
                block, conv, kind = key.split(".")
                leaf = ("kernel", array.transpose(2, 3, 1, 0)) if kind == "weight" else ("bias", array)
                params.setdefault(block, {}).setdefault(conv, {})[leaf[0]] = jnp.asarray(leaf[1])
            assert jax.tree_util.tree_map(jnp.shape, params) == jax.tree_util.tree_map(jnp.shape, variables["params"])
            return net.bind({"params": params})


        def logits(bound, x):
            return np.asarray(bound(jnp.asarray(x)))  # training=False: dropout off"""),
    walk=src("""
        X = jax.random.uniform(jax.random.PRNGKey(1), (1, 224, 224, 1))  # NHWC
        bound = net.bind(variables)  # a module with its weights, callable layer by layer
        for layer, (name, shape) in zip(bound.layers(), backend.layer_shapes(model, spec, 224), strict=True):
            X = layer(X)
            print(f"{name:<8} {type(layer).__name__:<10} output shape: {tuple(X.shape)}")
            assert tuple(X.shape) == shape, (name, tuple(X.shape), shape)"""),
    step=src("""
        def loss_fn(params, x, y, key):
            logits = net.apply({"params": params}, x, training=True, rngs={"dropout": key})  # dropout on
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


        loss_and_grad = jax.jit(jax.value_and_grad(loss_fn))
        params = book.variables["params"]
        for step in range(5):
            loss, grads = loss_and_grad(params, jnp.asarray(x), jnp.asarray(y), jax.random.PRNGKey(step))
            params = jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads)  # plain SGD
            print(f"step {step + 1}: loss {float(loss):.4f}")"""),
    start=src("""
        from safetensors.flax import load_file

        params = {}
        for key, array in load_file(INITIAL).items():  # JAX arrays, kernels OIHW
            block, conv, kind = key.split(".")  # nin1.conv0.weight: params["nin1"]["conv0"]["kernel"]
            leaf = ("kernel", array.transpose(2, 3, 1, 0)) if kind == "weight" else ("bias", array)  # HWIO
            params.setdefault(block, {}).setdefault(conv, {})[leaf[0]] = leaf[1]
        model.params = params  # the rendering keeps its parameter tree beside the module; its Trainer reads it"""),
)

FRAMEWORKS = {"torch": TORCH, "tensorflow": KERAS, "mxnet": GLUON, "jax": FLAX}
