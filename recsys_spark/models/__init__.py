"""The models that rank items: the Keras sequence model and the sentence encoder for item text."""
