//! Client for vmmd.
