"""Serving: ``idm-vton serve``, a web UI and an HTTP API over one model and one work queue.

- :mod:`.config`: server settings and request parameters, validated at the boundary;
- :mod:`.images`: uploaded bytes to verified images, images to metadata-free PNGs;
- :mod:`.engine`: the model side (automatic mask/pose, batched pipeline calls);
- :mod:`.job_queue`: jobs, the bounded queue (requests and pixels), same-garment batching,
  worker threads;
- :mod:`.service`: one server's state and background model loading;
- :mod:`.requests`: from what a client sent to a queued job, shared by the API and the UI;
- :mod:`.api`, :mod:`.ui`, :mod:`.ui_files`, :mod:`.security`, :mod:`.app`: HTTP routes, the
  Gradio UI and its files, the body limit, read timeout and API key, the combined ASGI app;
- :mod:`.server`: running it for a config, in this process or on Ray Serve (:mod:`.ray_app`);
  the ``idm-vton serve`` options are parsed by :mod:`idm_vton.commands.serve`.

Names are imported from their module (``idm_vton.serving.config.ServeConfig``), as in the
package's other folders. Needs the ``serve`` extra (``pip install ".[serve]"`` in the clone; Ray:
``".[serve,ray]"``). See docs/serving.md.
"""
