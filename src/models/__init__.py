"""CoupAlign's network and its parts. Build a model with `src.models.factory.create_model(cfg)`; the parts are
chosen by name from the registries of src/models/registry.py."""
