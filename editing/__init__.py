"""Face attributes: what a face shows (smile, glasses, hair...) and how to
move it in a generator's latent space.

- ``editing.classifier``: the face-attribute CNN trained on CelebA's labels,
  its file, and its scores (balanced accuracy, AUC)
- ``editing.directions``: one direction per attribute in z-space (InterFaceGAN),
  stored beside the generator's params and applied as edits
- ``editing.latents``: latents by seed, slerp walks, the arithmetic of seeds and concepts
- ``editing.projection``: a face into z (projection) and the generator tuned around it (PTI)
"""
