"""Experiments: scripts on top of the library, each with a README that holds its tables and their commands.

- `speed`: the train steps beside the peer benchmark, and the primitives beside their lax lowering;
- `upsampling`: which up-sampling makes better GAN images, by more than seed-to-seed noise.

The library never imports them.
"""
