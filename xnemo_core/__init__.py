"""X-NeMo engine: what the nodes call. Importable without a running ComfyUI server.

Module map (docs/architecture.md draws the same house; tests/unit/test_layout.py checks both against the files):

pure/ (torch, numpy, OpenCV; never imports ComfyUI or anything outside pure/)
    constants       official numbers, file roles, official defaults, the patch key
    errors          domain errors with messages that say what to do
    payloads        XNEMO_MOTION and XNEMO_CROP payloads passed between nodes
    keys            strict state-dict key checks
    layers          motion cross-attention and temporal attention sites, feed-forward
    cpu_linear      float32 linear layers on the CPU through oneDNN (AVX-512 on any x86), not the BLAS
    motion_encoder  face crop + f_rts -> 32 x 16 motion tokens
    motion_ops      interpolation, re-timing and strength of motion
    motion_file     XNEMO_MOTION to and from a versioned .safetensors file (Save / Load Motion)
    face_track      face detection (BlazeFace default, Haar) and tracking, face choice, missing-face policies, preview
    core_faces      face tracks of core's MediaPipe nodes (FACE_LANDMARKS, BOUNDING_BOX) as detections to follow
    face_crop       official crop geometry and resize filters, reference and CLIP crops, f_rts
    blazeface       MediaPipe's FaceDetector (BlazeFace short range) in torch, batched
    tflite          a small TensorFlow Lite file reader (tensors, operators, buffers)
    windows         sliding context windows and window counts
    compose         paste-back into the original frames, whole or a chunk at a time
    svd_vae_keys    Stable Video Diffusion VAE: diffusers key names -> ComfyUI's temporal-decoder layout

adapters/ (ComfyUI side: may import pure/ and comfy, never pipeline or nodes)
    face_model      the BlazeFace model file, the device the detector runs on, its memory asked of ComfyUI
    checkpoint      the four official files: safe reading, identification, key mapping
    model           build the denoising MODEL and the XNEMO bundle as ComfyUI models
    unet_patch      sites in ComfyUI's UNet, conditioning routing, X-NeMo schedule, attn2/GEGLU object patches
    reference_bank  the reference bank: class, block key, writer (ReferenceNet pass), reader (attn1 patch + attention
                    override: reference keys/values projected once, CPU SDPA)
    core_patches    other nodes' MODEL patches: reference read around attn1 replace patches, refusals at sampling start
    sampling        official DDIM on ComfyUI samplers, start latent, windowed CFG
    resume          resumable renders: content-hashed render key, per-step checkpoints, step-by-step sampler, time left
    vae             the SVD VAE from the files users have, VAE checks, reference latent, official fixed-chunk decode
    clip            CLIP ViT-L/14 check and the official image embedding of the reference crop
    video_out       LATENT -> MP4 chunk by chunk: official decode, paste back, H.264 + audio (Save Video, streaming)

pipeline        (top: may import pure/ and adapters/) Encode Motion and Reference Condition: face tracking, motion
                tokens, CLIP embedding, reference latent and bank, the CFG pair and the start latent
"""
