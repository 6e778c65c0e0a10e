"""DensePose without detectron2 (docs/preprocessing.md): the network, its weights, its picture.

- :mod:`.weights` reads the official ``model_final_162be9.pkl`` without running pickle code;
- :mod:`.model` is the network and its inference, step for step as detectron2 runs it
  (RoIAlign and NMS in :mod:`.roi_ops`);
- :mod:`.render` draws the fine-segmentation picture as the demo does;
- :mod:`.predictor` is the adapter the pipeline uses (:class:`DensePosePredictor`).
"""
