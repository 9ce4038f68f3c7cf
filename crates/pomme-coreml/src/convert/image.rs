//! Image features ↔ pomme tensors, in plain Rust so it is tested everywhere.
//!
//! A Core ML image input is a `CVPixelBuffer`; clients send tensors. An RGB
//! or BGR model gets a 32BGRA buffer (Core ML reorders channels to the model's
//! color space itself, so clients always send RGB), a grayscale model a
//! OneComponent8 buffer, a `GRAYSCALE_FLOAT16` model OneComponent16Half.
//! Tensors are `U8` (or `F32`, rounded and clamped to 0..=255; `F16`/`F32` for
//! half-float grayscale), laid out `[H, W, C]` / `[1, H, W, C]` (the default
//! signature's form) or `[C, H, W]` / `[1, C, H, W]` (the signature's form under
//! `image_layout = "nchw"`, [`ImageLayout`]). Image outputs come back as
//! `U8 [H, W, C]` (`F16 [H, W, 1]`). Rows of a pixel
//! buffer may be padded: every function takes the buffer's bytes per row.

use crate::reader::{FeatureInfo, ShapeFlexibility};
use half::f16;
use pomme_core::tensor::AlignedBuf;
use pomme_core::{AllowedShapes, DType, Dim, Error, Result, Shape, Tensor, TensorSpec};

/// The `CVPixelBuffer` pixel formats pomme builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PixelFormat {
    /// `kCVPixelFormatType_32BGRA`: B, G, R, A bytes.
    Bgra32,
    /// `kCVPixelFormatType_OneComponent8`.
    OneComponent8,
    /// `kCVPixelFormatType_OneComponent16Half`.
    OneComponent16Half,
}

impl PixelFormat {
    /// The format for an image feature's color space (the reader's `data_type`).
    pub fn for_color_space(color_space: &str) -> Result<PixelFormat> {
        match color_space {
            "RGB" | "BGR" => Ok(PixelFormat::Bgra32),
            "GRAYSCALE" => Ok(PixelFormat::OneComponent8),
            "GRAYSCALE_FLOAT16" => Ok(PixelFormat::OneComponent16Half),
            other => Err(Error::InvalidModelFormat(format!(
                "image color space {other} is not one Core ML defines (RGB, BGR, GRAYSCALE, GRAYSCALE_FLOAT16)"
            ))),
        }
    }

    /// The CoreVideo four-character code (`OSType`).
    pub const fn four_cc(self) -> u32 {
        match self {
            PixelFormat::Bgra32 => u32::from_be_bytes(*b"BGRA"),
            PixelFormat::OneComponent8 => u32::from_be_bytes(*b"L008"),
            PixelFormat::OneComponent16Half => u32::from_be_bytes(*b"L00h"),
        }
    }

    /// The pixel format for a CoreVideo code, for image outputs.
    pub fn from_four_cc(code: u32) -> Option<PixelFormat> {
        [
            PixelFormat::Bgra32,
            PixelFormat::OneComponent8,
            PixelFormat::OneComponent16Half,
        ]
        .into_iter()
        .find(|f| f.four_cc() == code)
    }

    pub const fn bytes_per_pixel(self) -> usize {
        match self {
            PixelFormat::Bgra32 => 4,
            PixelFormat::OneComponent8 => 1,
            PixelFormat::OneComponent16Half => 2,
        }
    }

    /// Channels of the tensor side: 3 (RGB) or 1.
    pub const fn channels(self) -> usize {
        match self {
            PixelFormat::Bgra32 => 3,
            _ => 1,
        }
    }
}

/// Width and height in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageSize {
    pub width: usize,
    pub height: usize,
}

/// Where the channels sit in an image tensor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ImageLayout {
    /// `[H, W, C]` or `[1, H, W, C]`.
    #[default]
    Hwc,
    /// `[C, H, W]` or `[1, C, H, W]`.
    Chw,
}

impl ImageLayout {
    /// The `image_layout` option: `hwc` / `nhwc` (default) or `chw` / `nchw`
    /// (case ignored).
    pub fn parse(v: &str) -> Result<ImageLayout> {
        match v.trim().to_ascii_lowercase().as_str() {
            "hwc" | "nhwc" => Ok(ImageLayout::Hwc),
            "chw" | "nchw" => Ok(ImageLayout::Chw),
            _ => Err(Error::invalid_input(format!(
                "image_layout '{v}' is not one of nhwc, nchw"
            ))),
        }
    }
}

/// The layout and size of an image tensor for `format`. `layout`, the
/// model's declared layout, admits only that reading; without it, when both
/// readings fit (`[3, 2, 3]`) the one of the model's size (`hint`) wins, else
/// channels last.
pub fn image_of(
    name: &str,
    t: &Tensor,
    format: PixelFormat,
    hint: Option<ImageSize>,
    layout: Option<ImageLayout>,
) -> Result<(ImageLayout, ImageSize)> {
    let c = format.channels();
    let ok_dtype = match format {
        PixelFormat::OneComponent16Half => matches!(t.dtype(), DType::F16 | DType::F32),
        _ => matches!(t.dtype(), DType::U8 | DType::F32),
    };
    if !ok_dtype {
        let want = match format {
            PixelFormat::OneComponent16Half => "FP16 or FP32",
            _ => "UINT8 or FP32",
        };
        return Err(Error::invalid_input(format!(
            "image input '{name}' takes {want} pixels, not {}",
            t.dtype()
        )));
    }
    let dims = match t.shape() {
        [1, rest @ ..] if rest.len() == 3 => rest,
        s => s,
    };
    let mut readings = Vec::new();
    if let [d0, d1, d2] = *dims {
        if d2 == c && layout != Some(ImageLayout::Chw) {
            let size = ImageSize {
                width: d1,
                height: d0,
            };
            readings.push((ImageLayout::Hwc, size));
        }
        if d0 == c && layout != Some(ImageLayout::Hwc) {
            let size = ImageSize {
                width: d2,
                height: d1,
            };
            readings.push((ImageLayout::Chw, size));
        }
    }
    let best = readings
        .iter()
        .find(|(_, s)| Some(*s) == hint)
        .or(readings.first());
    let want = match layout {
        Some(ImageLayout::Hwc) => format!("[height, width, {c}]"),
        Some(ImageLayout::Chw) => format!("[{c}, height, width]"),
        None => format!("[height, width, {c}] or [{c}, height, width]"),
    };
    match best {
        Some(&r) => Ok(r),
        None => Err(Error::invalid_input(format!(
            "image input '{name}' must be {want} (optionally with a leading 1), got {:?}",
            t.shape()
        ))),
    }
}

/// An image input's spec (`[H, W, C]`, the reader's form) in `layout`: under
/// [`ImageLayout::Chw`] it becomes `[1, C, H, W]` (NCHW, the form vision
/// models exported from PyTorch take), allowed shapes permuted alike, so the
/// edge check admits NCHW tensors and refuses HWC ones with one clear line.
pub fn spec_in_layout(spec: &TensorSpec, layout: ImageLayout) -> TensorSpec {
    let [h, w, c] = &spec.shape.0[..] else {
        return spec.clone();
    };
    if layout == ImageLayout::Hwc {
        return spec.clone();
    }
    let mut out = spec.clone();
    out.shape = Shape(vec![Dim::Fixed(1), c.clone(), h.clone(), w.clone()]);
    out.allowed = spec.allowed.as_ref().map(|a| match a {
        AllowedShapes::OneOf(shapes) => AllowedShapes::OneOf(
            shapes
                .iter()
                .map(|s| match s[..] {
                    [h, w, c] => vec![1, c, h, w],
                    _ => s.clone(),
                })
                .collect(),
        ),
        AllowedShapes::Ranges(r) => match r[..] {
            [h, w, c] => AllowedShapes::Ranges(vec![(1, Some(1)), c, h, w]),
            _ => AllowedShapes::Ranges(r.clone()),
        },
    });
    out
}

/// Whether `size` is one the image feature allows; the error names them.
pub fn check_size(feature: &FeatureInfo, size: ImageSize) -> Result<()> {
    let (h, w) = (size.height as u64, size.width as u64);
    let ok = match &feature.flexibility {
        ShapeFlexibility::Fixed => feature.shape == [h, w],
        ShapeFlexibility::Enumerated(sizes) => sizes.iter().any(|s| s[..] == [h, w]),
        ShapeFlexibility::Range(r) => {
            r.len() == 2
                && [h, w]
                    .iter()
                    .zip(r)
                    .all(|(&d, r)| d >= r.lower && r.upper.is_none_or(|u| d <= u))
        }
    };
    if ok {
        return Ok(());
    }
    let allowed = match &feature.flexibility {
        ShapeFlexibility::Fixed => format!("{}x{}", feature.shape[1], feature.shape[0]),
        ShapeFlexibility::Enumerated(sizes) => sizes
            .iter()
            .map(|s| format!("{}x{}", s[1], s[0]))
            .collect::<Vec<_>>()
            .join(", "),
        ShapeFlexibility::Range(r) if r.len() == 2 => {
            format!("width {} and height {}", r[1], r[0])
        }
        ShapeFlexibility::Range(_) => "none".into(),
    };
    Err(Error::invalid_input(format!(
        "image input '{}' is {}x{} (width x height); the model takes {allowed}",
        feature.name, size.width, size.height
    )))
}

/// Writes an image tensor into a pixel buffer's bytes (`bytes_per_row` each;
/// row padding is left as is). Returns the image size; `hint` and `layout` as
/// in [`image_of`].
pub fn fill_pixels(
    name: &str,
    t: &Tensor,
    format: PixelFormat,
    dst: &mut [u8],
    bytes_per_row: usize,
    hint: Option<ImageSize>,
    layout: Option<ImageLayout>,
) -> Result<ImageSize> {
    let (layout, size) = image_of(name, t, format, hint, layout)?;
    let (w, h, c) = (size.width, size.height, format.channels());
    let bpp = format.bytes_per_pixel();
    if bytes_per_row < w * bpp || dst.len() < bytes_per_row * h.saturating_sub(1) + w * bpp {
        return Err(Error::Internal(format!(
            "pixel buffer too small for {w}x{h} ({} bytes, {bytes_per_row} per row)",
            dst.len()
        )));
    }
    // Index of channel `ch` of pixel (y, x) in the tensor's data.
    let at = |y: usize, x: usize, ch: usize| match layout {
        ImageLayout::Hwc => (y * w + x) * c + ch,
        ImageLayout::Chw => (ch * h + y) * w + x,
    };
    match format {
        PixelFormat::OneComponent16Half => {
            let v: Vec<f16> = match t.dtype() {
                DType::F16 => t.to_vec::<f16>()?,
                _ => t.to_vec::<f32>()?.into_iter().map(f16::from_f32).collect(),
            };
            for y in 0..h {
                let row = &mut dst[y * bytes_per_row..];
                for x in 0..w {
                    row[x * 2..x * 2 + 2].copy_from_slice(&v[at(y, x, 0)].to_ne_bytes());
                }
            }
        }
        _ => {
            let v: Vec<u8> = match t.dtype() {
                DType::U8 => t.to_vec::<u8>()?,
                _ => t
                    .to_vec::<f32>()?
                    .into_iter()
                    .map(|f| f.round().clamp(0.0, 255.0) as u8)
                    .collect(),
            };
            for y in 0..h {
                let row = &mut dst[y * bytes_per_row..];
                for x in 0..w {
                    if format == PixelFormat::Bgra32 {
                        let (r, g, b) = (v[at(y, x, 0)], v[at(y, x, 1)], v[at(y, x, 2)]);
                        row[x * 4..x * 4 + 4].copy_from_slice(&[b, g, r, 255]);
                    } else {
                        row[x] = v[at(y, x, 0)];
                    }
                }
            }
        }
    }
    Ok(size)
}

/// Reads a pixel buffer's bytes into `U8 [H, W, C]` (RGB for 32BGRA) or
/// `F16 [H, W, 1]`.
pub fn read_pixels(
    src: &[u8],
    bytes_per_row: usize,
    format: PixelFormat,
    size: ImageSize,
) -> Result<Tensor> {
    let (w, h) = (size.width, size.height);
    let bpp = format.bytes_per_pixel();
    if bytes_per_row < w * bpp || src.len() < bytes_per_row * h.saturating_sub(1) + w * bpp {
        return Err(Error::InferenceFailed(format!(
            "Core ML returned a {w}x{h} image in a buffer of {} bytes ({bytes_per_row} per row)",
            src.len()
        )));
    }
    let c = format.channels();
    let elem = if format == PixelFormat::OneComponent16Half {
        2
    } else {
        1
    };
    let mut out = AlignedBuf::zeroed(w * h * c * elem);
    let dst = out.as_mut_bytes();
    for y in 0..h {
        let row = &src[y * bytes_per_row..];
        for x in 0..w {
            let px = &row[x * bpp..(x + 1) * bpp];
            let o = (y * w + x) * c * elem;
            match format {
                PixelFormat::Bgra32 => dst[o..o + 3].copy_from_slice(&[px[2], px[1], px[0]]),
                _ => dst[o..o + bpp].copy_from_slice(px),
            }
        }
    }
    let dtype = if elem == 2 { DType::F16 } else { DType::U8 };
    Tensor::from_raw(dtype, vec![h, w, c], out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reader::{FeatureKind, SizeRange};

    fn rgb_2x3() -> Tensor {
        // 2 rows, 3 columns, RGB: pixel (y, x) = (10y+x, 100+10y+x, 200+x).
        let mut v = Vec::new();
        for y in 0..2u8 {
            for x in 0..3u8 {
                v.extend([10 * y + x, 100 + 10 * y + x, 200 + x]);
            }
        }
        Tensor::from_vec(vec![2, 3, 3], v).unwrap()
    }

    #[test]
    fn four_cc_codes_are_corevideos() {
        assert_eq!(PixelFormat::Bgra32.four_cc(), 0x4247_5241);
        assert_eq!(PixelFormat::OneComponent8.four_cc(), 0x4C30_3038);
        assert_eq!(PixelFormat::OneComponent16Half.four_cc(), 0x4C30_3068);
        assert_eq!(
            PixelFormat::from_four_cc(0x4C30_3038),
            Some(PixelFormat::OneComponent8)
        );
        assert_eq!(PixelFormat::for_color_space("BGR"), Ok(PixelFormat::Bgra32));
        assert!(PixelFormat::for_color_space("CMYK").is_err());
    }

    #[test]
    fn rgb_hwc_into_padded_bgra_and_back() {
        let t = rgb_2x3();
        let bpr = 3 * 4 + 4; // 4 bytes of row padding
        let mut buf = vec![0xEEu8; bpr * 2];
        let size =
            fill_pixels("image", &t, PixelFormat::Bgra32, &mut buf, bpr, None, None).unwrap();
        assert_eq!(
            size,
            ImageSize {
                width: 3,
                height: 2
            }
        );
        // Pixel (1, 2): R = 12, G = 112, B = 202, A = 255.
        assert_eq!(&buf[bpr + 8..bpr + 12], &[202, 112, 12, 255]);
        assert_eq!(&buf[12..16], &[0xEE; 4], "padding untouched");
        let back = read_pixels(&buf, bpr, PixelFormat::Bgra32, size).unwrap();
        assert_eq!(back.shape(), &[2, 3, 3]);
        assert_eq!(back.to_vec::<u8>().unwrap(), t.to_vec::<u8>().unwrap());
    }

    #[test]
    fn nchw_and_float_tensors_give_the_same_pixels() {
        let hwc = rgb_2x3();
        let v = hwc.to_vec::<u8>().unwrap();
        let mut chw = vec![0f32; v.len()];
        for y in 0..2 {
            for x in 0..3 {
                for c in 0..3 {
                    chw[(c * 2 + y) * 3 + x] = f32::from(v[(y * 3 + x) * 3 + c]) + 0.4;
                }
            }
        }
        let nchw = Tensor::from_vec(vec![1, 3, 2, 3], chw).unwrap();
        // [1, 3, 2, 3] reads both ways: the model's size decides.
        let size = ImageSize {
            width: 3,
            height: 2,
        };
        let (layout, _) = image_of("x", &nchw, PixelFormat::Bgra32, Some(size), None).unwrap();
        assert_eq!(layout, ImageLayout::Chw);
        let (layout, _) = image_of("x", &nchw, PixelFormat::Bgra32, None, None).unwrap();
        assert_eq!(layout, ImageLayout::Hwc);
        let mut a = vec![0u8; 24];
        let mut b = vec![0u8; 24];
        fill_pixels("x", &hwc, PixelFormat::Bgra32, &mut a, 12, Some(size), None).unwrap();
        fill_pixels(
            "x",
            &nchw,
            PixelFormat::Bgra32,
            &mut b,
            12,
            Some(size),
            None,
        )
        .unwrap();
        assert_eq!(a, b);
        // Out-of-range floats clamp.
        let t = Tensor::from_vec(vec![1, 1, 1], vec![300.0f32]).unwrap();
        let mut g = vec![0u8; 1];
        fill_pixels("x", &t, PixelFormat::OneComponent8, &mut g, 1, None, None).unwrap();
        assert_eq!(g, [255]);
    }

    #[test]
    fn a_declared_layout_admits_only_its_reading() {
        // [1, 3, 3, 3] reads both ways; the declared layout decides.
        let t = Tensor::from_vec(vec![1, 3, 3, 3], (0..27u8).collect::<Vec<_>>()).unwrap();
        let chw = image_of("x", &t, PixelFormat::Bgra32, None, Some(ImageLayout::Chw)).unwrap();
        assert_eq!(chw.0, ImageLayout::Chw);
        let hwc = image_of("x", &t, PixelFormat::Bgra32, None, Some(ImageLayout::Hwc)).unwrap();
        assert_eq!(hwc.0, ImageLayout::Hwc);
        // An HWC tensor under NCHW: one line naming the layout.
        let hwc_only = Tensor::from_vec(vec![2, 4, 3], vec![0u8; 24]).unwrap();
        let e = image_of(
            "x",
            &hwc_only,
            PixelFormat::Bgra32,
            None,
            Some(ImageLayout::Chw),
        )
        .unwrap_err();
        assert!(e.to_string().contains("must be [3, height, width]"), "{e}");
        assert_eq!(ImageLayout::parse(" NCHW ").unwrap(), ImageLayout::Chw);
        assert_eq!(ImageLayout::parse("nhwc").unwrap(), ImageLayout::Hwc);
        assert!(ImageLayout::parse("planar").is_err());
    }

    #[test]
    fn specs_move_to_nchw_with_their_allowed_shapes() {
        let spec = TensorSpec::new(
            "image",
            DType::U8,
            Shape(vec![
                Dim::Symbolic("?".into()),
                Dim::Symbolic("?".into()),
                Dim::Fixed(3),
            ]),
        )
        .allowing(AllowedShapes::OneOf(vec![vec![8, 16, 3], vec![32, 32, 3]]));
        assert_eq!(spec_in_layout(&spec, ImageLayout::Hwc), spec);
        let nchw = spec_in_layout(&spec, ImageLayout::Chw);
        assert_eq!(nchw.shape.to_string(), "[1,3,?,?]");
        nchw.check(&Tensor::from_vec(vec![1, 3, 8, 16], vec![0u8; 384]).unwrap())
            .unwrap();
        let e = nchw
            .check(&Tensor::from_vec(vec![8, 16, 3], vec![0u8; 384]).unwrap())
            .unwrap_err();
        assert!(e.to_string().contains("expected [1,3,?,?]"), "{e}");
        let e = nchw
            .check(&Tensor::from_vec(vec![1, 3, 16, 16], vec![0u8; 768]).unwrap())
            .unwrap_err();
        assert!(e.to_string().contains("[1,3,8,16] or [1,3,32,32]"), "{e}");
        let ranged = TensorSpec::new("g", DType::U8, Shape::fixed(&[4, 4, 1])).allowing(
            AllowedShapes::Ranges(vec![(4, Some(64)), (4, None), (1, Some(1))]),
        );
        let r = spec_in_layout(&ranged, ImageLayout::Chw);
        assert_eq!(r.shape, Shape::fixed(&[1, 1, 4, 4]));
        assert_eq!(r.allowed.unwrap().to_string(), "[1,1,4..64,4..]");
    }

    #[test]
    fn half_grayscale_round_trips() {
        let t = Tensor::from_vec(vec![2, 2, 1], vec![0.5f32, 1.0, -2.0, 0.25]).unwrap();
        let mut buf = vec![0u8; 2 * 6];
        let size = fill_pixels(
            "g",
            &t,
            PixelFormat::OneComponent16Half,
            &mut buf,
            6,
            None,
            None,
        )
        .unwrap();
        let back = read_pixels(&buf, 6, PixelFormat::OneComponent16Half, size).unwrap();
        assert_eq!(back.dtype(), DType::F16);
        let got: Vec<f32> = back
            .to_vec::<f16>()
            .unwrap()
            .into_iter()
            .map(f16::to_f32)
            .collect();
        assert_eq!(got, [0.5, 1.0, -2.0, 0.25]);
    }

    #[test]
    fn wrong_tensors_are_one_line_invalid_input() {
        let bad_shape = Tensor::from_vec(vec![2, 3, 4], vec![0u8; 24]).unwrap();
        let e = image_of("image", &bad_shape, PixelFormat::Bgra32, None, None).unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)), "{e}");
        assert!(e.to_string().contains("[height, width, 3]"), "{e}");
        let bad_type = Tensor::from_vec(vec![2, 2, 3], vec![0i32; 12]).unwrap();
        let e = image_of("image", &bad_type, PixelFormat::Bgra32, None, None).unwrap_err();
        assert!(e.to_string().contains("UINT8 or FP32"), "{e}");
        let mut small = vec![0u8; 8];
        assert!(
            fill_pixels(
                "image",
                &rgb_2x3(),
                PixelFormat::Bgra32,
                &mut small,
                12,
                None,
                None
            )
            .is_err()
        );
    }

    fn image(flex: ShapeFlexibility) -> FeatureInfo {
        FeatureInfo {
            name: "image".into(),
            description: String::new(),
            kind: FeatureKind::Image,
            optional: false,
            data_type: "RGB".into(),
            shape: vec![8, 16],
            flexibility: flex,
        }
    }

    #[test]
    fn sizes_are_checked_against_the_feature() {
        let s = |width, height| ImageSize { width, height };
        check_size(&image(ShapeFlexibility::Fixed), s(16, 8)).unwrap();
        let e = check_size(&image(ShapeFlexibility::Fixed), s(8, 16)).unwrap_err();
        assert!(e.to_string().contains("takes 16x8"), "{e}");
        let enumerated = image(ShapeFlexibility::Enumerated(vec![
            vec![8, 16],
            vec![32, 32],
        ]));
        check_size(&enumerated, s(32, 32)).unwrap();
        let e = check_size(&enumerated, s(16, 16)).unwrap_err();
        assert!(e.to_string().contains("16x8, 32x32"), "{e}");
        let range = image(ShapeFlexibility::Range(vec![
            SizeRange {
                lower: 4,
                upper: Some(64),
            },
            SizeRange {
                lower: 8,
                upper: None,
            },
        ]));
        check_size(&range, s(1000, 64)).unwrap();
        let e = check_size(&range, s(4, 4)).unwrap_err();
        assert!(e.to_string().contains("width 8.. and height 4..64"), "{e}");
    }
}
