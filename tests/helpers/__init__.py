"""Builders shared by several test modules (imported as ``from .helpers.<module> import ...``).

Test modules never import each other; what two of them need lives here.

- :mod:`.checkpoints`: a tiny pipeline written in the *published* IDM-VTON layout;
- :mod:`.datasets`: small synthetic VITON-HD and DressCode folders;
- :mod:`.golden`: replaying the golden reference case's noise draws through the pipeline;
- :mod:`.images`: image files built byte by byte (a PNG header declaring a huge size);
- :mod:`.metrics`: the metric networks written out with plain ``torch.nn.functional`` calls,
  to check the library's implementations against;
- :mod:`.pickles`: a pickle payload that writes a file when unpickled (proof code ran);
- :mod:`.pipeline_inputs`: random photos and a box mask at 64 x 48, and the tiny pipeline's
  call on them;
- :mod:`.preprocess_models`: small parsing, OpenPose and DensePose files in the real formats.
"""
