//! One ONNX Runtime session per input shape, for the CUDA EP.
//!
//! The CUDA EP keeps the prepared kernels of a grouped (depthwise) convolution
//! for the last input shape only, and prepares them again at every shape
//! change, which costs far more than the run itself; a dynamic batcher changes
//! the batch size from one run to the next. So a worker keeps a small set of
//! sessions keyed by the exact input shapes, least recently used first; past
//! the cap the least recently used one takes the new shape (correct, only
//! slow). Each session holds its own copy of the weights on the device.

/// The key: every input's shape, in the model's order.
pub(crate) type ShapeKey = Vec<Vec<usize>>;

/// Sessions by input shape, least recently used first.
pub(crate) struct ShapeSessions<S> {
    slots: Vec<(ShapeKey, S)>,
    /// A session built before any shape was seen (the load-time one): the
    /// first shape takes it instead of building another.
    spare: Option<S>,
    cap: usize,
}

impl<S> ShapeSessions<S> {
    /// At most `cap` (≥ 1) sessions; `spare` is used for the first shape.
    pub(crate) fn new(cap: usize, spare: Option<S>) -> Self {
        ShapeSessions {
            slots: Vec::new(),
            spare,
            cap: cap.max(1),
        }
    }

    /// The session for `key`, building one with `build` when this shape is
    /// new and the cap allows; otherwise the least recently used session is
    /// given to `key`. The second value says whether the session is new to the
    /// shape (the caller logs it: that run prepares kernels).
    pub(crate) fn get<E>(
        &mut self,
        key: &ShapeKey,
        build: impl FnOnce() -> Result<S, E>,
    ) -> Result<(&mut S, bool), E> {
        if let Some(i) = self.slots.iter().position(|(k, _)| k == key) {
            let slot = self.slots.remove(i);
            self.slots.push(slot);
            return Ok((&mut self.slots.last_mut().expect("just pushed").1, false));
        }
        let session = if self.slots.len() >= self.cap {
            self.slots.remove(0).1
        } else {
            match self.spare.take() {
                Some(s) => s,
                None => build()?,
            }
        };
        self.slots.push((key.clone(), session));
        Ok((&mut self.slots.last_mut().expect("just pushed").1, true))
    }

    /// Every session held (for ending profiles).
    pub(crate) fn all_mut(&mut self) -> impl Iterator<Item = &mut S> {
        self.slots
            .iter_mut()
            .map(|(_, s)| s)
            .chain(self.spare.as_mut())
    }

    #[cfg(test)]
    fn keys(&self) -> Vec<&ShapeKey> {
        self.slots.iter().map(|(k, _)| k).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(rows: usize) -> ShapeKey {
        vec![vec![rows, 3]]
    }

    #[test]
    fn each_shape_keeps_its_own_session() {
        let mut built = 0u32;
        let mut s: ShapeSessions<u32> = ShapeSessions::new(3, Some(100));
        let mut get = |s: &mut ShapeSessions<u32>, rows| {
            let (v, fresh) = s
                .get::<()>(&key(rows), || {
                    built += 1;
                    Ok(built)
                })
                .unwrap();
            (*v, fresh)
        };
        // The spare goes to the first shape; later shapes build.
        assert_eq!(get(&mut s, 1), (100, true));
        assert_eq!(get(&mut s, 4), (1, true));
        assert_eq!(get(&mut s, 1), (100, false));
        assert_eq!(get(&mut s, 4), (1, false));
        assert_eq!(get(&mut s, 8), (2, true));
        // Full: a fourth shape takes the least recently used session (rows 1).
        assert_eq!(get(&mut s, 2), (100, true));
        assert_eq!(s.keys(), vec![&key(4), &key(8), &key(2)]);
        assert_eq!(get(&mut s, 1), (1, true), "rows 1 was evicted");
        assert_eq!(built, 2);
    }

    #[test]
    fn a_failed_build_leaves_the_set_unchanged() {
        let mut s: ShapeSessions<u32> = ShapeSessions::new(2, None);
        assert!(s.get(&key(1), || Err("no GPU memory")).is_err());
        assert!(s.keys().is_empty());
        let (v, fresh) = s.get::<&str>(&key(1), || Ok(7)).unwrap();
        assert_eq!((*v, fresh), (7, true));
    }

    #[test]
    fn cap_zero_means_one() {
        let mut s: ShapeSessions<u32> = ShapeSessions::new(0, None);
        s.get::<()>(&key(1), || Ok(1)).unwrap();
        let (v, fresh) = s.get::<()>(&key(2), || Ok(2)).unwrap();
        assert_eq!((*v, fresh), (1, true), "one session, taken over");
    }
}
