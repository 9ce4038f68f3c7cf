//! Image features: tensors → `CVPixelBuffer` inputs and image outputs → `U8`
//! tensors, around the plain-Rust layout code in `convert::image`.
//! Type-checked, not run.

use crate::convert::image::{self, ImageLayout, ImageSize, PixelFormat};
use objc2::rc::Retained;
use objc2_core_ml::MLFeatureValue;
use objc2_core_video::{
    CVPixelBuffer, CVPixelBufferCreate, CVPixelBufferGetBaseAddress, CVPixelBufferGetBytesPerRow,
    CVPixelBufferGetHeight, CVPixelBufferGetPixelFormatType, CVPixelBufferGetWidth,
    CVPixelBufferLockBaseAddress, CVPixelBufferLockFlags, CVPixelBufferUnlockBaseAddress,
    kCVReturnSuccess,
};
use pomme_core::{Error, Result, Tensor};
use std::ptr::NonNull;

/// A pixel buffer of `format` holding the image tensor `t` (its size from the
/// tensor; `hint`, the model's default size, settles layouts that read both
/// ways unless `layout`, the model's declared one, says).
pub(crate) fn pixel_buffer(
    name: &str,
    t: &Tensor,
    format: PixelFormat,
    hint: Option<ImageSize>,
    layout: Option<ImageLayout>,
) -> Result<Retained<CVPixelBuffer>> {
    let (layout, size) = image::image_of(name, t, format, hint, layout)?;
    let mut out: *mut CVPixelBuffer = std::ptr::null_mut();
    // SAFETY: default allocator and attributes; `out` is a valid place for
    // the created buffer, which we own (+1) on success.
    let rc = unsafe {
        CVPixelBufferCreate(
            None,
            size.width,
            size.height,
            format.four_cc(),
            None,
            NonNull::from(&mut out),
        )
    };
    if rc != kCVReturnSuccess {
        return Err(Error::Internal(format!(
            "CVPixelBufferCreate {}x{} failed (CVReturn {rc})",
            size.width, size.height
        )));
    }
    // SAFETY: a +1 buffer CoreVideo just created.
    let buf = unsafe { Retained::from_raw(out) }
        .ok_or_else(|| Error::Internal("CVPixelBufferCreate returned no buffer".into()))?;
    let flags = CVPixelBufferLockFlags(0);
    // SAFETY: the buffer is locked for writing while its bytes are filled;
    // base address and bytes per row describe `height` rows of it.
    unsafe {
        if CVPixelBufferLockBaseAddress(&buf, flags) != kCVReturnSuccess {
            return Err(Error::Internal("cannot lock a pixel buffer".into()));
        }
        let base = CVPixelBufferGetBaseAddress(&buf).cast::<u8>();
        let bpr = CVPixelBufferGetBytesPerRow(&buf);
        let h = CVPixelBufferGetHeight(&buf);
        let filled = if base.is_null() {
            Err(Error::Internal("pixel buffer has no base address".into()))
        } else {
            let dst = std::slice::from_raw_parts_mut(base, bpr * h);
            image::fill_pixels(name, t, format, dst, bpr, Some(size), Some(layout))
        };
        CVPixelBufferUnlockBaseAddress(&buf, flags);
        filled?;
    }
    Ok(buf)
}

/// An image feature value for `t`.
pub(crate) fn image_value(
    name: &str,
    t: &Tensor,
    format: PixelFormat,
    hint: Option<ImageSize>,
    layout: Option<ImageLayout>,
) -> Result<Retained<MLFeatureValue>> {
    let buf = pixel_buffer(name, t, format, hint, layout)?;
    // SAFETY: wraps a live pixel buffer (retained by the feature value).
    Ok(unsafe { MLFeatureValue::featureValueWithPixelBuffer(&buf) })
}

/// An image output as `U8 [H, W, C]` (`F16 [H, W, 1]`).
pub(crate) fn read_image(name: &str, fv: &MLFeatureValue) -> Result<Tensor> {
    // SAFETY: getter on a live feature value of image type.
    let buf = unsafe { fv.imageBufferValue() }
        .ok_or_else(|| Error::InferenceFailed(format!("output '{name}' holds no image")))?;
    let code = CVPixelBufferGetPixelFormatType(&buf);
    let format = PixelFormat::from_four_cc(code).ok_or_else(|| {
        Error::InferenceFailed(format!(
            "output '{name}' is an image in pixel format {:?}, which pomme does not read",
            code.to_be_bytes().map(char::from)
        ))
    })?;
    let size = ImageSize {
        width: CVPixelBufferGetWidth(&buf),
        height: CVPixelBufferGetHeight(&buf),
    };
    let flags = CVPixelBufferLockFlags::ReadOnly;
    // SAFETY: locked read-only while its rows are copied; base address and
    // bytes per row describe `height` rows.
    unsafe {
        if CVPixelBufferLockBaseAddress(&buf, flags) != kCVReturnSuccess {
            return Err(Error::InferenceFailed("cannot lock an output image".into()));
        }
        let base = CVPixelBufferGetBaseAddress(&buf).cast::<u8>();
        let bpr = CVPixelBufferGetBytesPerRow(&buf);
        let read = if base.is_null() {
            Err(Error::InferenceFailed(
                "output image has no base address".into(),
            ))
        } else {
            let src = std::slice::from_raw_parts(base, bpr * size.height);
            image::read_pixels(src, bpr, format, size)
        };
        CVPixelBufferUnlockBaseAddress(&buf, flags);
        read
    }
}
