"""The timestep policy measured without a student: teacher features cached at a grid of timesteps,
the reward's landscape over that grid (`landscape`), and how fast a policy settles on it (`settle`).
"""
