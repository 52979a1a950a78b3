"""Numbers fixed by the official X-NeMo release (see ../shared/docs/xnemo-reference.md)."""

MODEL_FOLDER = "x-nemo"
PATCH_KEY = "xnemo"  # key of X-NeMo's patches, wrappers and per-call state in transformer_options
CHECKPOINT_FILES = {
    "denoising_unet": "xnemo_denoising_unet",
    "reference_unet": "xnemo_reference_unet",
    "motion_encoder": "xnemo_motion_encoder",
    "temporal_module": "xnemo_temporal_module",
}

MOTION_TOKEN_DIM = 16  # width of each token
FACE_FEATURE_DIM = 512  # raw FAN feature per frame
MOTION_INPUT_SIZE = 224  # motion-encoder crop size
TEMPORAL_MAX_FRAMES = 32  # temporal positional-encoding length: the longest window the temporal layers accept

DEFAULT_STEPS = 35
MAX_STEPS = 1000  # Sample Animation's steps limit, and the window readout's (/xnemo/windows)
MAX_FRAMES = 100_000  # longest clip the window readout counts and a motion file may hold
DEFAULT_CFG = 2.5
DEFAULT_CONTEXT_LENGTH = 24
DEFAULT_CONTEXT_OVERLAP = 4
DEFAULT_CROP_SCALE = 1.1  # driving / reference motion crop side over the face box
DEFAULT_SMOOTHING_SIGMA = 5.0  # Gaussian sigma (frames) of the driving crop centre
# "draft" preset of Sample Animation: NOT the official sampling, a quick preview (no unconditional rows, fewer steps)
DRAFT_CFG = 1.0
DRAFT_STEPS = 12

BETA_START = 0.00085
BETA_END = 0.02  # X-NeMo trains with a noisier schedule than SD1.5 (0.012)
NUM_TRAIN_TIMESTEPS = 1000
LATENT_SCALE = 0.18215
DECODE_CHUNK_SIZE = 25  # frames the official SVD temporal decoder decodes together (decode_latents_svd)

INIT_BLUR_KERNEL = 9
INIT_BLUR_SIGMA = 18.0
