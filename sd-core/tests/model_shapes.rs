//! Shape-level checks of the models on synthetic weights: every layer wires up, odd latent sizes
//! round-trip through the UNet, and the autoencoder scales by its downscale factor.

use std::sync::Arc;

use sd_core::models::{
    AutoencoderKL, ClipConfig, ClipTextModel, UNet2DConditionModel, UNetBlockKind, UNetConfig,
    VaeConfig,
};
use sd_core::weights::WeightStore;
use sd_core::{Device, Result, Tensor};

fn tiny_unet() -> UNetConfig {
    use UNetBlockKind::{CrossAttention, Plain};
    UNetConfig {
        block_out_channels: vec![16, 32, 32],
        down_blocks: vec![CrossAttention, CrossAttention, Plain],
        up_blocks: vec![Plain, CrossAttention, CrossAttention],
        attention_heads: vec![8; 3],
        cross_attention_dim: 16,
        norm_num_groups: 4,
        ..UNetConfig::sd_v1_5()
    }
}

#[test]
fn unet_handles_sizes_not_divisible_by_its_depth() -> Result<()> {
    let store = Arc::new(WeightStore::synthetic(1));
    let unet = UNet2DConditionModel::new(&store.view(Device::Cpu), &tiny_unet())?;
    let ctx = Tensor::full(0.1, [2, 77, 16], Device::Cpu)?;
    for (h, w) in [(8, 8), (9, 7), (5, 12)] {
        let x = Tensor::full(0.5, [2, 4, h, w], Device::Cpu)?;
        let y = unet.forward(&x, 500.0, &ctx)?;
        assert_eq!(y.dims(), &[2, 4, h, w]);
        assert!(y.to_vec()?.iter().all(|v| v.is_finite()));
    }
    Ok(())
}

#[test]
fn vae_and_clip_produce_expected_shapes() -> Result<()> {
    let store = Arc::new(WeightStore::synthetic(2));
    let cfg = VaeConfig {
        block_out_channels: vec![8, 16, 16, 16],
        norm_num_groups: 4,
        ..VaeConfig::sd_v1_5()
    };
    let vae = AutoencoderKL::new(&store.view(Device::Cpu), &cfg)?;
    let img = Tensor::full(0.2, [1, 3, 64, 48], Device::Cpu)?;
    let (mean, std) = vae.encode(&img)?;
    assert_eq!(mean.dims(), &[1, 4, 8, 6]);
    assert_eq!(std.dims(), &[1, 4, 8, 6]);
    assert_eq!(vae.decode(&mean)?.dims(), &[1, 3, 64, 48]);

    let clip_cfg = ClipConfig {
        hidden_size: 16,
        intermediate_size: 37,
        num_hidden_layers: 4,
        num_attention_heads: 2,
        ..ClipConfig::sd_v1_5()
    };
    let clip = ClipTextModel::new(&store.view(Device::Cpu), &clip_cfg)?;
    let ids = vec![vec![49406, 320, 1125, 49407, 49407]; 2];
    assert_eq!(clip.forward(&ids, 1)?.dims(), &[2, 5, 16]);
    assert!(clip.forward(&ids, 0).is_err());
    assert!(clip.forward(&ids, 5).is_err());
    Ok(())
}
