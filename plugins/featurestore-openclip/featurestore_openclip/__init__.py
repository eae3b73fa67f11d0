"""featurestore backbones from open_clip (CLIP, SigLIP, hub models), with their text towers."""
