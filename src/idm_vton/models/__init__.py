"""The IDM-VTON networks as stock diffusers UNets plus two attention processors (paper Sec. 3.2)."""
