// DDPData
