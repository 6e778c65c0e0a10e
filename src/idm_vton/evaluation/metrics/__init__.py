"""Try-on evaluation metrics (paper section 4): SSIM, LPIPS, FID, KID, CLIP-I."""
