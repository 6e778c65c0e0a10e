"""The try-on pipeline, its image handling, garment feature cache and memory modes."""
